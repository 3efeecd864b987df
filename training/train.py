"""Train ComMer (compression embeddings + LoRA, backbone frozen) or the prompt-tuning baseline.

    python -m training.train --config configs/x.yaml --set max_steps=200

Optimisation follows the paper (appendix A.1): AdamW (weight decay 0.001) with separate peak
learning rates (LoRA 1e-4, compression embeddings 1e-2; prompt tuning 3e-2), gradient clipping
at 0.3, cosine schedule with 3% linear warm-up, gradient accumulation to an effective batch of
16, validation perplexity every `eval_every` steps with early stopping.

Run folder (output_dir):
    last/    model checkpoint + training_state.{safetensors,json}: resume from here
    best/    the checkpoint with the best validation perplexity so far
    final/   the checkpoint to use (best, with trained=true and the training record)
    metrics.jsonl, config.json
Resuming restores weights, optimizer, scheduler, RNG and step, so a killed-and-resumed run
ends with the same weights as an uninterrupted one. No pickle: safetensors + JSON only.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from commer import BackboneError, CheckpointError, ComMer, ComMerConfig
from commer.task_prompt import load_task_prompt
from training.config import ConfigError, TrainConfig
from training.distillation import prepare_cache
from training.objectives import Objective
from training.probes import compression_spread, spread_documents
from training.prompt_tuning import PromptTuning
from training.tasks import DataError, Example, load_examples, reads_task_prompt
from training.trainable import Trainable

log = logging.getLogger("training")

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


# ---- models ----------------------------------------------------------------------------

def build_model(config: TrainConfig, resume_from: Path | None = None):
    """The model to train: fresh, from init_checkpoint, or from a resumable run folder."""

    if config.method == "prompt_tuning":
        source = resume_from or (Path(config.init_checkpoint) if config.init_checkpoint else None)
        if source is not None:
            return PromptTuning.from_pretrained(str(source), dtype=config.dtype, cache=config.cache_dir)
        return PromptTuning.from_backbone(config.backbone, config.num_compression_tokens, config.model_seed,
                                          config.dtype, config.cache_dir, config.max_answer_tokens)
    source = resume_from or (Path(config.init_checkpoint) if config.init_checkpoint else None)
    if source is not None:
        model = ComMer.from_pretrained(str(source), dtype=config.dtype, cache=config.cache_dir)
        if resume_from is None and config.grow_compression_tokens:
            model.grow_compression_tokens(config.grow_compression_tokens)  # a run folder has grown already
    else:
        model = ComMer.from_backbone(config.backbone, ComMerConfig(
            num_compression_tokens=config.num_compression_tokens, max_document_tokens=config.max_document_tokens,
            max_prompt_tokens=config.max_prompt_tokens, max_answer_tokens=config.max_answer_tokens,
            seed=config.model_seed,
            lora={"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                  "target_modules": list(config.lora_target_modules)},
        ), dtype=config.dtype, cache=config.cache_dir)
    if resume_from is None and config.init_task_prompt:  # a run folder has its task prompt already
        task = load_task_prompt(config.init_task_prompt)
        task.check_backbone(model.identity.content_hash, model.hidden_size)
        model.attach_task_prompt(task.soft_prompt)
    return model


# The TrainConfig field holding each group's peak learning rate (Trainable.trainable_parameters' names).
LEARNING_RATES = {"lora": "lr_lora", "compression_embeddings": "lr_embeddings", "soft_prompt": "lr_prompt",
                  "task_prompt": "lr_task_prompt"}


def param_groups(model: Trainable, config: TrainConfig) -> list[dict]:
    groups = []
    for name, params in model.trainable_parameters().items():
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": getattr(config, LEARNING_RATES[name]), "name": name})
    return groups


def example_nll(model: Trainable, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed answer NLL and token counts, for either kind of model."""
    return model.documents_nll([e.documents for e in examples], [e.instruction for e in examples],
                               [e.answer for e in examples], task_prompt=reads_task_prompt(examples))


def autoencoding_examples(config: TrainConfig, num_task_examples: int) -> list[Example]:
    """Single-document reconstruction examples to mix into a task's training set (seeded sample of
    `autoencoding_ratio` per task example); the batch order then interleaves them at random."""
    if not config.autoencoding_ratio:
        return []
    wanted = max(1, round(config.autoencoding_ratio * num_task_examples))
    pretrain = config.model_copy(update={"task": "pretrain", "data": list(config.autoencoding_data),
                                         "num_documents": 1, "val_data": [], "pretrain_passes": 1})
    examples = load_examples(pretrain, "train", wanted)
    if not examples:
        raise DataError(f"{config.autoencoding_data}: no auto-encoding examples to mix in")
    log.info("mixing %d auto-encoding examples into %d %s examples", len(examples), num_task_examples, config.task)
    return examples


def build_objective(config: TrainConfig, task_examples: list[Example], out: Path):
    """The step's loss for ComMer (cross-entropy plus the configured terms; the teacher scored once,
    cached on disk), or None for prompt tuning (plain cross-entropy, `example_nll`)."""
    if config.method != "commer":
        return None
    teacher = None
    if config.distill_weight:
        teacher = prepare_cache(config.distill_cache or out / "teacher", config.distill_teacher, task_examples,
                                config.distill_top_k, config.distill_temperature, config.backbone,
                                config.cache_dir, config.device, config.micro_batch_size)
    return Objective(config.distill_weight, teacher, config.contrast_weight, config.contrast_margin)


@torch.no_grad()
def validation_perplexity(model, examples: list[Example], batch_size: int) -> float:
    """Token-level perplexity exp(sum NLL / sum tokens) of the reference answers."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        nll, n = example_nll(model, examples[start: start + batch_size])
        total += float(nll.sum())
        count += float(n.sum())
    model.train(was_training)
    return math.exp(total / max(count, 1.0))


def save_model(model: Trainable, path: Path, record: dict | None = None) -> None:
    model.save_pretrained(str(path), training=record)


# ---- resumable state -------------------------------------------------------------------

def save_state(path: Path, optimizer, scheduler, meta: dict) -> None:
    tensors, groups = {}, []
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for group in opt["param_groups"]:
        groups.append({k: v for k, v in group.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(path / STATE_TENSORS))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (path / STATE_JSON).write_text(json.dumps({**meta, "param_groups": groups, "scheduler": sched}, indent=2))


def load_state(path: Path, optimizer, scheduler) -> dict:
    tensors = load_file(str(path / STATE_TENSORS))
    meta = json.loads((path / STATE_JSON).read_text())
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched = scheduler.state_dict()
    sched.update(meta["scheduler"])
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def has_state(path: Path) -> bool:
    return (path / STATE_TENSORS).exists() and (path / STATE_JSON).exists()


# ---- the loop --------------------------------------------------------------------------

class BatchOrder:
    """Example indices of optimizer step s: a seeded permutation per epoch, concatenated.

    A pure function of (seed, step), so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def __call__(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) training; returns a summary. The usable checkpoint is output_dir/final."""
    from transformers import get_cosine_schedule_with_warmup

    torch.set_num_threads(config.num_threads or max(1, os.cpu_count() or 1))
    if config.batch_size % config.micro_batch_size:
        raise ConfigError(f"batch_size ({config.batch_size}) must be a multiple of micro_batch_size "
                          f"({config.micro_batch_size})")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    last, best, final = out / "last", out / "best", out / "final"

    train_examples = load_examples(config, "train", config.max_train_examples)
    val_examples = load_examples(config, "val", config.val_examples)
    if not train_examples:
        raise DataError(f"{config.data}: no training examples for task {config.task!r}")
    objective = build_objective(config, train_examples, out)
    train_examples += autoencoding_examples(config, len(train_examples))
    if not val_examples:
        raise DataError(f"{config.data}: no validation examples for task {config.task!r}")

    resuming = config.resume and has_state(last)
    torch.manual_seed(config.seed)
    model = build_model(config, resume_from=last if resuming else None).to(config.device)
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * len(train_examples) / config.batch_size))
    warmup = int(round(config.warmup_ratio * total_steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)

    meta = {"step": 0, "best_val_ppl": None, "best_step": None, "bad_evals": 0, "elapsed_s": 0.0,
            "history": [], "stopped_early": False}
    if resuming:
        meta.update(load_state(last, optimizer, scheduler))
        log.info("resumed from %s at step %d", last, meta["step"])
    config.to_file(str(out / "config.json"))
    order = BatchOrder(len(train_examples), config.batch_size, config.seed)
    trainable = [p for g in groups for p in g["params"]]
    accumulation = config.batch_size // config.micro_batch_size

    spread_texts = spread_documents(val_examples)
    if meta["step"] == 0 and not resuming:
        initial = validation_perplexity(model, val_examples, config.micro_batch_size * 2)
        meta["history"].append({"step": 0, "val_ppl": initial})
        _append(out / "metrics.jsonl", {"step": 0, "val_ppl": initial,
                                        "compression_spread": compression_spread(model, spread_texts, 0)})
        log.info("step 0: validation perplexity %.3f", initial)

    bar = _progress(total_steps, meta["step"], progress)
    started = time.time() - meta["elapsed_s"]
    model.train()
    step = meta["step"]
    while step < total_steps and not meta["stopped_early"]:
        t0 = time.time()
        batch = [train_examples[i] for i in order(step)]
        optimizer.zero_grad(set_to_none=True)
        batch_loss, parts = 0.0, {}
        total_tokens = sum(len(_answer_tokens(model, e.answer)) for e in batch)
        for k in range(accumulation):
            micro = batch[k * config.micro_batch_size: (k + 1) * config.micro_batch_size]
            with torch.autocast(config.device, dtype=torch.bfloat16, enabled=config.autocast == "bfloat16"):
                if objective is None:
                    nll, _ = example_nll(model, micro)
                    # Token-weighted over the whole effective batch, as if it ran in one piece.
                    loss, micro_parts = nll.sum() / total_tokens, {}
                else:
                    loss, micro_parts = objective(model, micro, total_tokens)
            loss.backward()
            batch_loss += float(loss.detach())
            for name, value in micro_parts.items():
                if value is not None:
                    parts.setdefault(name, []).append(value)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        meta["step"] = step
        meta["elapsed_s"] = time.time() - started
        rate = len(batch) / max(time.time() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{batch_loss:.3f}", ex_s=f"{rate:.2f}")
        record = {"step": step, "loss": batch_loss, "lr": scheduler.get_last_lr(), "examples_per_s": rate,
                  "elapsed_s": round(meta["elapsed_s"], 1)}
        # The loss's terms per answer token of the batch (gap: mean nats per token own beat other by).
        record.update({name: (sum(v) / len(v) if name == "gap" else sum(v) / total_tokens)
                       for name, v in parts.items()})

        if step % config.eval_every == 0 or step == total_steps:
            val = validation_perplexity(model, val_examples, config.micro_batch_size * 2)
            record["val_ppl"] = val
            record["compression_spread"] = compression_spread(model, spread_texts, step)
            meta["history"].append({"step": step, "val_ppl": val})
            if meta["best_val_ppl"] is None or val < meta["best_val_ppl"]:
                meta.update(best_val_ppl=val, best_step=step, bad_evals=0)
                save_model(model, best)
            else:
                meta["bad_evals"] += 1
                if meta["bad_evals"] >= config.patience:
                    meta["stopped_early"] = True
            log.info("step %d: loss %.4f, validation perplexity %.3f (best %.3f at step %s)",
                     step, batch_loss, val, meta["best_val_ppl"], meta["best_step"])
        _append(out / "metrics.jsonl", record)

        if step % config.save_every == 0 or step == total_steps or meta["stopped_early"]:
            _save_last(model, last, optimizer, scheduler, meta)
        if config.stop_after_steps is not None and step >= config.stop_after_steps and step < total_steps:
            _save_last(model, last, optimizer, scheduler, meta)
            bar.close()
            log.info("stopping at step %d as asked (stop_after_steps); resume with the same command", step)
            return {"step": step, "stopped": True, "output_dir": str(out)}
    bar.close()

    # final/ = the best validated weights, with the record of how they were trained.
    source = best if (best.exists() and meta["best_step"] is not None) else last
    final_model = build_model(config, resume_from=source)
    record = training_record(config, model, meta, len(train_examples), len(val_examples), total_steps)
    if final.exists():
        shutil.rmtree(final)
    save_model(final_model, final, record)
    summary = {"output_dir": str(out), "final": str(final), **record["stages"][-1]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def training_record(config: TrainConfig, model, meta: dict, n_train: int, n_val: int, total_steps: int) -> dict:
    previous = model.training_stages() if config.init_checkpoint else []
    stage = {
        "task": config.task, "method": config.method, "data": list(config.data), "val_data": list(config.val_data),
        "num_documents": config.num_documents, "train_examples": n_train, "val_examples": n_val,
        "steps": meta["step"], "planned_steps": total_steps, "batch_size": config.batch_size,
        "best_step": meta["best_step"], "best_val_ppl": meta["best_val_ppl"],
        "initial_val_ppl": meta["history"][0]["val_ppl"] if meta["history"] else None,
        "val_history": meta["history"], "stopped_early": meta["stopped_early"],
        "wall_time_s": round(meta["elapsed_s"], 1), "init_checkpoint": config.init_checkpoint,
        "command": "python -m training.train " + " ".join(sys.argv[1:]) if sys.argv and "training" in sys.argv[0] else None,
        "config": config.model_dump(exclude={"output_dir", "resume", "stop_after_steps", "cache_dir"}),
    }
    return {"stages": previous + [stage]}


def _answer_tokens(model: Trainable, answer: str) -> list[int]:
    return model.answer_ids(answer)


def _save_last(model, last: Path, optimizer, scheduler, meta: dict) -> None:
    # Write next to it, then swap: a kill during saving never leaves a half-written last/.
    tmp = last.with_name(last.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp)
    save_state(tmp, optimizer, scheduler, meta)
    old = last.with_name(last.name + ".old")
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    if old.exists():
        shutil.rmtree(old)


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = TrainConfig.from_args(list(sys.argv[1:] if argv is None else argv))
        summary = train(config)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, (BackboneError, CheckpointError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    print(json.dumps({k: summary[k] for k in ("final", "steps", "best_val_ppl", "wall_time_s") if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
