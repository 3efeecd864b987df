"""The default checkpoint's recipe in one command, sized to a wall-clock budget.

    python -m training.recipe --time_budget 8m --output_dir runs/recipe \
        --pretrain_data ../shared/data/wikitext2/test.txt ../shared/data/wikitext2/valid.txt \
        --news_data ../shared/data/huffpost/news_category_v3_subset.jsonl \
                    ../shared/data/huffpost/news_category_v2_extra.jsonl

Stage 1 teaches the compressor to compress: single-document auto-encoding ("What does document
1 contain?" → the document) on WikiText plus the training authors' news documents, so a
compression has to carry its document's specifics -- its validation perplexity is the
single-document reconstruction perplexity, the leading indicator. Stage 2 fine-tunes on the
news-headline task (training authors, BM25 top-n of their other articles) with auto-encoding
examples still mixed in: news alone took held-out reconstruction from 10 back to 48 (the
compressor became a task-prompt generator). The baseline stage trains prompt tuning without
documents for as many news steps, so the evaluation's task-only row had the same training.
Then both are evaluated (training.evaluation.controls, the evaluation with controls).

The budget is split between the stages by `stage_shares`; each stage's step count comes from
seconds per optimizer step measured at the start (a few calibration steps on this hardware),
so both cosine schedules decay fully inside the budget. The plan is written to
`recipe_plan.json`; rerunning the same command resumes from where it stopped (each stage
resumes from its last/ folder) and keeps the plan.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from commer import ComMer
from commer.checkpoint import CheckpointError, read_config
from commer.precision import resolve_device, resolve_dtype
from training.config import ConfigError, TrainConfig
from training.curves import combined_metrics, plot_validation
from training.evaluation import controls
from training.flags import add_model_flags, given_values
from training.probes import news_documents, reconstruction_perplexity
from training.tasks import DataError, load_examples
from training.tasks.base import split_of
from training.tasks.news import FRACTIONS, format_document, read_articles
from training.train import build_model, example_nll, param_groups, train, validation_perplexity

log = logging.getLogger("training.recipe")

PLAN_FILE = "recipe_plan.json"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RecipeConfig(BaseModel):
    """What the recipe trains; every field is a flag (`--field value`)."""

    model_config = ConfigDict(extra="forbid")

    time_budget: str = Field("8m", description="Wall-clock budget for both stages and the evaluation: "
                                               "e.g. 90s, 8m, 2h.")
    output_dir: str = Field("runs/recipe", description="Run folder: stage1/, stage2/, final/, plan, metrics.")
    pretrain_data: list[str] = Field(default_factory=list, description="Auto-encoding corpora (WikiText files, "
                                                                       "JSONL/Parquet with 'text').")
    news_data: list[str] = Field(default_factory=list, description="HuffPost JSONL file(s) (both files: more "
                                                                   "authors, same author split).")
    news_in_pretraining: bool = Field(True, description="Add the training authors' news documents to the "
                                                        "auto-encoding corpus (never test authors).")
    init_checkpoint: Optional[str] = Field(None, description="Start stage 1 from this ComMer checkpoint (e.g. an "
                                                           "earlier run's stage1/final) instead of a fresh model, "
                                                           "so CPU hours add up across runs; its LoRA settings "
                                                           "win over the flags, and a larger --num_compression_"
                                                           "tokens grows its K (trained slots repeated).")
    backbone: str = Field("default", description="Backbone reference (default: the embedded SmolLM2).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="Backbone precision; auto: "
                                                                              "bfloat16 on cuda, float32 on cpu.")
    num_compression_tokens: int = Field(8, ge=1, description="K.")
    lora_r: int = Field(32, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR),
                                           description="All attention and MLP projections by default.")
    lr_lora: float = Field(1e-3, gt=0, description="Peak LoRA learning rate. The paper's 1e-4 was set for "
                                                   "Gemma-2b and a million pretraining examples; a few thousand "
                                                   "steps need more.")
    lr_embeddings: float = Field(1e-2, gt=0, description="Peak compression-embedding learning rate.")
    pretrain_documents: int = Field(1, ge=1, description="Documents merged per auto-encoding example.")
    news_documents: int = Field(4, ge=1, description="Documents merged per news example (BM25 top-n).")
    stage2_autoencoding: float = Field(0.5, ge=0, description="Stage 2: auto-encoding examples (stage 1's corpus) "
                                                              "mixed in per news example, so the news task does "
                                                              "not erase what compressions keep (0: news only).")
    baseline: bool = Field(True, description="Also train the prompt-tuning baseline without documents (K soft "
                                             "tokens, task adaptation only) for as many news steps as stage 2, "
                                             "and evaluate it beside ComMer.")
    max_document_tokens: int = Field(64, ge=1, description="Documents are cut to this many tokens.")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer step.")
    micro_batch_size: int = Field(16, ge=1, description="Examples per forward/backward.")
    stage_shares: tuple[float, float] = Field((0.55, 0.3), description="Fractions of the budget for stage 1 "
                                                                       "and stage 2 (the rest: loading, "
                                                                       "validation, evaluation).")
    max_examples_per_user: int = Field(40, ge=1, description="news: cap per author, so prolific authors do "
                                                             "not dominate.")
    val_examples: int = Field(48, ge=1, description="Validation examples per stage (perplexity).")
    evaluations_per_stage: int = Field(6, ge=1, description="Validation (and best-checkpoint) points per stage.")
    probe_examples: int = Field(64, ge=0, description="Held-out news documents for the final single-document "
                                                      "reconstruction probe (test authors; 0: skip).")
    eval_examples: int = Field(400, ge=0, description="Test examples for training.evaluate_controls on the final "
                                                      "checkpoint (0: skip the evaluation).")
    seed: int = Field(0, description="Seed for data order, initialisation and dropout.")
    num_threads: int = Field(0, ge=0, description="CPU threads (0 = all cores).")

    def budget_seconds(self) -> float:
        return parse_duration(self.time_budget)

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def resolved_dtype(self) -> str:
        return resolve_dtype(self.dtype, self.resolved_device())


def parse_duration(text: str) -> float:
    """'90s' / '8m' / '2h' / '1h30m' / '600' (seconds) → seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != text.replace(" ", ""):
        raise ConfigError(f"--time_budget {text!r}: expected a duration such as 90s, 8m, 2h or 1h30m")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


# ---- the two stages ----------------------------------------------------------------------

def news_corpus(recipe: RecipeConfig, folder: Path) -> Path | None:
    """The training authors' news documents as an auto-encoding corpus file in the run folder."""
    if not (recipe.news_in_pretraining and recipe.news_data):
        return None
    path = folder / "news_train_documents.jsonl"
    if not path.exists():
        rows = []
        for data in recipe.news_data:
            for author, articles in sorted(read_articles(data).items()):
                if split_of(author, FRACTIONS) == "train":
                    rows += [{"text": format_document(a["headline"], a["short_description"])} for a in articles]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.rename(path)
    return path


def compression_tokens(recipe: RecipeConfig) -> tuple[int, Optional[int]]:
    """(K of the run, K to grow --init_checkpoint to or None): a checkpoint keeps a larger K than the
    flag's, and grows to a larger flag, so the run's K -- the baseline's prompt budget too -- is the max."""
    start = recipe.init_checkpoint
    if not start or not (Path(start) / "commer_config.json").exists():
        return recipe.num_compression_tokens, None
    trained = read_config(start).num_compression_tokens
    K = max(trained, recipe.num_compression_tokens)
    return K, (K if K > trained else None)


def stage_configs(recipe: RecipeConfig, out: Path, steps: tuple[int, int]) -> tuple[TrainConfig, TrainConfig]:
    K, grow = compression_tokens(recipe)
    common = dict(
        device=recipe.resolved_device(), dtype=recipe.resolved_dtype(), batch_size=recipe.batch_size,
        micro_batch_size=min(recipe.micro_batch_size, recipe.batch_size), seed=recipe.seed,
        num_threads=recipe.num_threads, val_examples=recipe.val_examples, lr_lora=recipe.lr_lora,
        lr_embeddings=recipe.lr_embeddings, patience=recipe.evaluations_per_stage + 1,
        # Model fields: used by stage 1; stage 2 starts from stage 1's checkpoint (they are then
        # ignored) but its calibration probe builds the same shape of model.
        backbone=recipe.backbone, num_compression_tokens=K,
        max_document_tokens=recipe.max_document_tokens, lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
        lora_dropout=0.0, lora_target_modules=recipe.lora_target_modules, model_seed=recipe.seed,
    )
    corpus = list(recipe.pretrain_data)
    extra = news_corpus(recipe, out)
    if extra is not None:
        corpus.append(str(extra))
    s1, s2 = steps
    stage1 = TrainConfig(
        task="pretrain", data=corpus, num_documents=recipe.pretrain_documents,
        max_answer_tokens=recipe.max_document_tokens, max_steps=s1, init_checkpoint=recipe.init_checkpoint,
        grow_compression_tokens=grow, eval_every=max(1, s1 // recipe.evaluations_per_stage), save_every=max(1, s1 // 20),
        output_dir=str(out / "stage1"), **common)
    stage2 = TrainConfig(
        task="news", data=list(recipe.news_data), num_documents=recipe.news_documents,
        max_examples_per_user=recipe.max_examples_per_user, init_checkpoint=str(out / "stage1" / "final"),
        autoencoding_data=corpus if recipe.stage2_autoencoding else [],
        autoencoding_ratio=recipe.stage2_autoencoding,
        max_steps=s2, eval_every=max(1, s2 // recipe.evaluations_per_stage), save_every=max(1, s2 // 20),
        output_dir=str(out / "stage2"), **common)
    return stage1, stage2


def baseline_config(recipe: RecipeConfig, out: Path, steps: int) -> TrainConfig:
    """Prompt tuning without documents: K soft tokens, the same news examples' instructions and
    answers, as many optimizer steps as stage 2 (its own learning rate, the paper's 3e-2)."""
    stage2 = stage_configs(recipe, out, (1, steps))[1]
    return stage2.model_copy(update={
        "method": "prompt_tuning", "num_documents": 0, "init_checkpoint": None,
        "autoencoding_data": [], "autoencoding_ratio": 0.0, "output_dir": str(out / "baseline")})


def stage_timing(config: TrainConfig, steps: int, warmup: int = 1) -> tuple[float, float]:
    """Wall seconds of one optimizer step (median, after `warmup` steps) and of one validation pass
    of this stage on this hardware: the plan budgets both, so validation does not push a run past
    its budget."""
    # Stage 2 starts from stage 1's checkpoint, which does not exist yet: time the same shape of model.
    start = config.init_checkpoint if config.init_checkpoint and Path(config.init_checkpoint).exists() else None
    probe = config.model_copy(update={"init_checkpoint": start})
    model = build_model(probe).to(config.device)
    groups = param_groups(model, probe)
    optimizer = torch.optim.AdamW(groups, weight_decay=probe.weight_decay)
    examples = load_examples(probe, "val", max(config.batch_size * (steps + 1), config.val_examples))
    model.train()
    timings = []
    for step in range(steps + warmup):
        batch = [examples[(step * config.batch_size + i) % len(examples)] for i in range(config.batch_size)]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for k in range(0, len(batch), config.micro_batch_size):
            nll, count = example_nll(model, batch[k: k + config.micro_batch_size])
            (nll.sum() / max(float(count.sum()), 1.0)).backward()
        optimizer.step()
        if config.device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    validation_perplexity(model, examples[: config.val_examples], config.micro_batch_size * 2)
    return statistics.median(timings[warmup:]), time.perf_counter() - t0


def make_plan(recipe: RecipeConfig, out: Path) -> dict:
    """Steps per stage from the budget and the measured seconds per step (written once)."""
    path = out / PLAN_FILE
    if path.exists():
        plan = json.loads(path.read_text())
        log.info("resuming with the plan in %s: %s", path, {k: plan[k] for k in ("stage1_steps", "stage2_steps")})
        return plan
    budget = recipe.budget_seconds()
    # On CUDA the first steps of a process pay for kernel selection and the caching allocator's
    # growth: with one warm-up step the H200 plan measured 0.87 s/step for a stage that then ran at
    # 0.44, and the run ended with a third of its budget unused. Three warm-up steps and the median.
    cuda = recipe.resolved_device() == "cuda"
    calibration, warmup = (10, 3) if cuda else (2, 1)
    probe1, probe2 = stage_configs(recipe, out, (1, 1))
    (t1, v1) = stage_timing(probe1, calibration, warmup)
    (t2, v2) = stage_timing(probe2, calibration, warmup)
    # The baseline runs as many steps as stage 2, paid from stage 2's share.
    tb, vb = stage_timing(baseline_config(recipe, out, 1), calibration, warmup) if recipe.baseline else (0.0, 0.0)
    share1, share2 = recipe.stage_shares
    # Each stage validates at step 0 and `evaluations_per_stage` times more; that time comes off its share.
    validations = recipe.evaluations_per_stage + 1
    plan = {
        "budget_s": budget, "seconds_per_step": [t1, t2, tb], "seconds_per_validation": [v1, v2, vb],
        "stage1_steps": max(1, int((budget * share1 - validations * v1) / t1)),
        "stage2_steps": max(1, int((budget * share2 - validations * (v2 + vb)) / (t2 + tb))),
        "device": recipe.resolved_device(), "dtype": recipe.resolved_dtype(), "hardware": hardware(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(plan, indent=2))
    log.info("plan: stage 1 %d steps (%.2f s/step), stage 2 %d steps (%.2f s/step)",
             plan["stage1_steps"], t1, plan["stage2_steps"], t2)
    return plan


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def run(recipe: RecipeConfig) -> dict:
    started = time.time()
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.num_threads or max(1, os.cpu_count() or 1))
    plan = make_plan(recipe, out)
    stage1, stage2 = stage_configs(recipe, out, (plan["stage1_steps"], plan["stage2_steps"]))
    summaries = []
    stages = [stage1, stage2]
    if recipe.baseline:
        stages.append(baseline_config(recipe, out, plan["stage2_steps"]))
    for config in stages:
        log.info("%s: %d steps of task %r (%s)", Path(config.output_dir).name, config.max_steps, config.task,
                 config.method)
        summaries.append(train(config))
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / "stage2" / "final", final)
    record = {
        "recipe": recipe.model_dump(), "plan": plan, "wall_time_s": round(time.time() - started, 1),
        "stage_summaries": summaries, "command": "python -m training.recipe " + " ".join(sys.argv[1:]),
    }
    _record_recipe(final, record)
    metrics = combined_metrics(out)
    plot_validation(metrics, out / "validation_perplexity.png")
    if recipe.probe_examples:
        # After stage 1 as well: whether the compressor compresses, and how much of it stage 2 keeps.
        record["reconstruction_probe_stage1"] = probe(recipe, out / "stage1" / "final")
        record["reconstruction_probe"] = probe(recipe, final)
        log.info("single-document reconstruction on held-out news: after stage 1 %s; final %s",
                 record["reconstruction_probe_stage1"], record["reconstruction_probe"])
    (out / "recipe_summary.json").write_text(json.dumps(record, indent=2, default=str))
    if recipe.eval_examples:
        result = controls.evaluate(
            data=recipe.news_data, checkpoint=str(final), output=str(out / "evaluation"),
            prompt_tuning_nodocs=str(out / "baseline" / "final") if recipe.baseline else None,
            max_examples=recipe.eval_examples, device=recipe.resolved_device(), num_threads=recipe.num_threads,
            seed=recipe.seed, resume=True)
        print(result["table"])
    return record


def probe(recipe: RecipeConfig, checkpoint: Path) -> dict:
    """Single-document reconstruction perplexity of held-out (test-author) news documents,
    with the no-soft-prompt reference: the leading indicator that a compression carries its
    document."""
    model = ComMer.from_pretrained(str(checkpoint), dtype=recipe.resolved_dtype()).to(recipe.resolved_device())
    documents = news_documents(recipe.news_data, "test", seed=recipe.seed)
    return reconstruction_perplexity(model, documents, 1, recipe.probe_examples, recipe.seed, reference=True)


def _record_recipe(final: Path, record: dict) -> None:
    """Add the recipe (data files, steps, wall time, hardware) to the checkpoint's training record.

    The record is free-form and not fingerprinted, so the checkpoint's fingerprint is unchanged.
    """
    config_path = final / "commer_config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("training", {})["recipe"] = json.loads(json.dumps(record, default=str))
    config_path.write_text(json.dumps(config, indent=2))


def build_parser() -> argparse.ArgumentParser:
    return add_model_flags(argparse.ArgumentParser(prog="python -m training.recipe",
                                                   description=__doc__.split("\n")[0]), RecipeConfig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    given = given_values(args, RecipeConfig)
    try:
        recipe = RecipeConfig.model_validate(given)
        recipe.budget_seconds()
        if not recipe.pretrain_data or not recipe.news_data:
            raise ConfigError("--pretrain_data and --news_data are required (paths to the shared data files)")
        summary = run(recipe)
    except ValidationError as exc:
        print("error: " + "; ".join(f"--{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
              file=sys.stderr)
        return 2
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"final": str(Path(recipe.output_dir) / "final"), "wall_time_s": summary["wall_time_s"],
                      "steps": [summary["plan"]["stage1_steps"], summary["plan"]["stage2_steps"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
