"""Training configuration: one pydantic model, loadable from YAML/JSON, every field overridable.

    python -m training.train --config run.yaml --set max_steps=200 --set lora_r=16
    python -m training.train --task news --data path.jsonl --max_steps 200   # generated flags
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.flags import add_model_flags, given_values


class ConfigError(ValueError):
    """A bad config file or override; the message names the file/field and the problem."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ---- task and data ----------------------------------------------------------------
    task: Literal["pretrain", "news", "lamp4", "lamp7", "perltqa"] = Field(
        "news", description="Which task builds the examples.")
    method: Literal["commer", "prompt_tuning"] = Field(
        "commer", description="commer: compression embeddings + LoRA; prompt_tuning: Lester et al. baseline "
                              "(trainable soft prompt, documents as plain text).")
    data: list[str] = Field(default_factory=list, description=(
        "Data file(s). pretrain: corpus files (.jsonl/.parquet with 'text', or plain text); news: the HuffPost "
        "JSONL file(s), rows concatenated; lamp4/lamp7: the *_questions.json of the training split; perltqa: the memory JSON."))
    data_outputs: Optional[str] = Field(None, description=(
        "lamp4/lamp7: the *_outputs.json matching `data`; perltqa: the QA JSON."))
    val_data: list[str] = Field(default_factory=list, description=(
        "Optional separate validation file(s) (pretrain corpus; lamp: dev questions). Empty: validation users / "
        "documents are held out of `data` by hash."))
    val_outputs: Optional[str] = Field(None, description="lamp4/lamp7: the outputs JSON matching `val_data`.")
    num_documents: int = Field(3, ge=0, description="Documents per example (BM25 top-n for news/LaMP, group size "
                                                    "for pretraining, memory subset size for PerLTQA). 0 only "
                                                    "for prompt tuning on news: the no-documents baseline.")
    pretrain_passes: int = Field(1, ge=1, description="pretrain: regroup the corpus this many times into examples.")
    max_train_examples: Optional[int] = Field(None, ge=1, description="Cap on training examples (seeded sample).")
    max_examples_per_user: Optional[int] = Field(None, ge=1, description="Cap on examples per user (news), so "
                                                                         "prolific authors do not dominate.")
    val_examples: int = Field(64, ge=1, description="Validation examples used for perplexity (paper: 1024).")
    autoencoding_data: list[str] = Field(default_factory=list, description=(
        "Auto-encoding corpus file(s) (as for task=pretrain) mixed into this task's training examples: "
        "single-document reconstruction examples, so task fine-tuning does not erase what a compression "
        "keeps of its document (it did: held-out reconstruction 10 after pretraining, 48 after news)."))
    autoencoding_ratio: float = Field(0.0, ge=0.0, description=(
        "Auto-encoding examples added per task training example (0: none). Validation stays on the task."))

    # ---- objectives that make the profile carry the user (issue 23; training/objectives.py) ----
    distill_teacher: Optional[str] = Field(None, description=(
        "Distillation teacher: a prompt-tuning folder (its soft prompt + the documents as text) or 'text' "
        "(the frozen backbone with the documents as text). Scored once per task example into distill_cache."))
    distill_cache: Optional[str] = Field(None, description=(
        "Teacher cache folder (top-k answer log-probs per example; training/distillation.py); default "
        "output_dir/teacher. Shared by runs with the same teacher, k and temperature; extended as needed."))
    distill_weight: float = Field(0.0, ge=0.0, description="α: weight of T²·KL(teacher ‖ student) per answer "
                                                           "token, added to the cross-entropy (0: off).")
    distill_temperature: float = Field(1.0, gt=0.0, description="T: temperature of both distributions in the KL.")
    distill_top_k: int = Field(64, ge=1, description="Teacher log-probs kept per answer token (plus the rest's mass).")
    contrast_weight: float = Field(0.0, ge=0.0, description=(
        "β: weight of the user-contrast hinge max(0, m − (NLL_other − NLL_own)) per answer token, NLL_other "
        "with another training author's BM25 top-n documents for the same query (news; 0: off)."))
    contrast_margin: float = Field(0.1, ge=0.0, description="m: nats per answer token by which the own "
                                                            "documents should fit better than another author's.")
    autocast: Literal["none", "bfloat16"] = Field("none", description=(
        "Training forward/backward under torch.autocast in bfloat16 (weights and optimizer stay float32); "
        "validation stays in the backbone's dtype."))

    # ---- model ----------------------------------------------------------------------
    init_checkpoint: Optional[str] = Field(None, description="Start from this ComMer checkpoint (e.g. fine-tune "
                                                             "after pretraining); model fields below are then ignored.")
    grow_compression_tokens: Optional[int] = Field(None, ge=1, description=(
        "With init_checkpoint: grow its K to this many compression tokens, repeating the trained "
        "embeddings (commer.model.ComMer.grow_compression_tokens), so a larger K starts from a trained "
        "compressor; None keeps the checkpoint's K."))
    init_task_prompt: Optional[str] = Field(None, description=(
        "A prompt-tuning folder (commer.task_prompt) whose soft prompt becomes the checkpoint's own task prompt, "
        "read before every profile and trained with it (lr_task_prompt); method=commer."))
    backbone: str = Field("default", description="Backbone reference for a fresh model.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Backbone precision.")
    num_compression_tokens: int = Field(8, ge=1, description="K (ComMer) or soft-prompt length (prompt tuning).")
    max_document_tokens: int = Field(128, ge=1, description="Documents are truncated to this many tokens.")
    max_prompt_tokens: int = Field(256, ge=1, description="Instruction prompt token limit (keeps the end).")
    max_answer_tokens: int = Field(64, ge=1, description="Answers are truncated to this many tokens.")
    lora_r: int = Field(64, ge=1, description="LoRA rank (paper: 64).")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (paper: 16).")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="LoRA dropout (paper: 0.1).")
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"],
                                           description="Backbone linear layers with a LoRA adapter.")
    model_seed: int = Field(0, description="Seed for initialising compression embeddings / LoRA / soft prompt.")

    # ---- optimisation (paper appendix A.1) ----------------------------------------------
    lr_lora: float = Field(1e-4, gt=0, description="Peak learning rate of the LoRA weights.")
    lr_embeddings: float = Field(1e-2, gt=0, description="Peak learning rate of the compression embeddings.")
    lr_prompt: float = Field(3e-2, gt=0, description="Peak learning rate of the prompt-tuning soft prompt.")
    lr_task_prompt: float = Field(3e-3, gt=0, description="Peak learning rate of a ComMer checkpoint's own task "
                                                          "prompt (init_task_prompt: it starts trained).")
    weight_decay: float = Field(0.001, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(0.3, gt=0, description="Gradient clipping norm.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps with linear warm-up before cosine decay.")
    batch_size: int = Field(16, ge=1, description="Effective batch size (examples per optimizer step).")
    micro_batch_size: int = Field(4, ge=1, description="Examples per forward/backward; gradients accumulate "
                                                       "over batch_size / micro_batch_size micro-batches.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training examples (ignored if max_steps is set).")
    max_steps: Optional[int] = Field(None, ge=1, description="Total optimizer steps (fixes the LR schedule).")
    eval_every: int = Field(50, ge=1, description="Validate (perplexity) every this many optimizer steps.")
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every this many steps.")
    patience: int = Field(3, ge=1, description="Early stop after this many validations without improvement.")
    seed: int = Field(0, description="Seed for data order, example construction and dropout.")
    num_threads: int = Field(0, ge=0, description="torch threads; 0 = all available cores (at most 2 on a "
                                                  "shared 2-core machine is sensible).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where to train.")

    # ---- output ------------------------------------------------------------------------
    output_dir: str = Field("runs/train", description="Run folder: last/ (resumable), best/ (best validation), "
                                                      "final/ (the checkpoint to use), metrics.jsonl.")
    resume: bool = Field(True, description="Resume from output_dir/last if it holds a training state.")
    stop_after_steps: Optional[int] = Field(None, ge=1, description="Stop (after saving) at this step without "
                                                                    "changing the schedule: simulates a killed run.")
    cache_dir: Optional[str] = Field(None, description="Backbone cache folder (default ~/.cache/commer).")

    @model_validator(mode="after")
    def _documents_needed(self) -> "TrainConfig":
        # ComMer without documents has nothing to compress; other tasks build their examples from them.
        if self.num_documents == 0 and (self.method != "prompt_tuning" or self.task != "news"):
            raise ValueError("num_documents=0 is only for method=prompt_tuning with task=news "
                             "(the no-documents baseline)")
        return self

    @model_validator(mode="after")
    def _autoencoding_mix(self) -> "TrainConfig":
        # Mixing keeps the compressor compressing; prompt tuning has no compressor, pretraining is all of it.
        if self.autoencoding_ratio > 0 and not self.autoencoding_data:
            raise ValueError("autoencoding_ratio > 0 needs autoencoding_data (corpus files to reconstruct)")
        if self.autoencoding_ratio > 0 and (self.method != "commer" or self.task == "pretrain"):
            raise ValueError("autoencoding_ratio is for method=commer on a task other than pretrain")
        return self

    @model_validator(mode="after")
    def _growth_needs_a_checkpoint(self) -> "TrainConfig":
        # A fresh model takes num_compression_tokens directly; growing is for a trained compressor.
        if self.init_task_prompt and self.method != "commer":
            raise ValueError("init_task_prompt is for method=commer (prompt tuning's soft prompt is its task prompt)")
        if self.grow_compression_tokens and (not self.init_checkpoint or self.method != "commer"):
            raise ValueError("grow_compression_tokens needs method=commer and an init_checkpoint to grow "
                             "(for a fresh model set num_compression_tokens)")
        return self

    @model_validator(mode="after")
    def _objectives(self) -> "TrainConfig":
        # Both terms act through the compressions: nothing to distil into or contrast for prompt tuning.
        if (self.distill_weight or self.contrast_weight) and self.method != "commer":
            raise ValueError("distill_weight and contrast_weight are for method=commer")
        if self.distill_weight and not self.distill_teacher:
            raise ValueError("distill_weight > 0 needs distill_teacher (a prompt-tuning folder or 'text')")
        if self.contrast_weight and self.task != "news":
            raise ValueError("contrast_weight needs task=news (other authors' documents by the control's rule)")
        return self

    # ---- I/O ---------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str) -> "TrainConfig":
        return cls.model_validate(_read_mapping(path))

    def to_file(self, path: str) -> None:
        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            import yaml
            p.write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))
        else:
            p.write_text(self.model_dump_json(indent=2))

    @classmethod
    def from_args(cls, argv: list[str]) -> "TrainConfig":
        """--config FILE, then generated --field value flags, then --set field=value (YAML-parsed)."""
        args = build_parser(cls).parse_args(argv)
        values = _read_mapping(args.config) if args.config else {}
        values.update(given_values(args, cls))
        for item in args.set or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected field=value")
            key, raw = item.split("=", 1)
            if key not in cls.model_fields:
                raise ConfigError(f"--set {key}: no such config field (see --help)")
            import yaml
            values[key] = yaml.safe_load(raw)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"invalid training config: {_short(exc)}") from None


def build_parser(cls=TrainConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train", description="Train ComMer (or the prompt-tuning baseline).")
    parser.add_argument("--config", help="YAML or JSON file with TrainConfig fields.")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="Override any field (value parsed as YAML, e.g. lora_target_modules=[q_proj,v_proj]).")
    return add_model_flags(parser, cls)


def _read_mapping(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{p}: config file cannot be parsed ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: config file must hold a mapping of TrainConfig fields")
    unknown = sorted(set(data) - set(TrainConfig.model_fields))
    if unknown:
        raise ConfigError(f"{p}: unknown config field(s) {unknown}")
    return data


def _short(exc: ValidationError) -> str:
    # Model-level checks have no field location, and pydantic prefixes their message with "Value error, ".
    return "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                     for e in exc.errors()[:5])
