"""See the training recipe work on the bundled sample, in a few minutes on CPU, before pointing it at real data.

    python -m training.sample_run --output_dir runs/sample
    python -m pipelines.compress_users --output commer_output_sample --checkpoint runs/sample/final

It runs the recipe's first stage (training.recipe, stage 1: single-document auto-encoding) on the
documents compress_users reads by default (pipelines/sample_data/documents-*.jsonl): from a fresh,
untrained ComMer on the default backbone, each example is one document, and its K soft tokens must
let the frozen backbone write it back. Documents are split by a hash of their text; the held-out
ones' reconstruction perplexity is measured before the first step and after every few, so the
run prints whether the compressor learned to carry its document. Same code path, optimiser and
LoRA placement as the recipe (learning rate 3e-3, as for the bundled checkpoint), scaled down:
rank 8, batch 8, --max_steps steps. The result is a real checkpoint (trained=true) that every job
takes as --checkpoint; it is not the bundled one (which also had the news stage, on real data).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from commer.cli import CliParser
from training.config import ConfigError, TrainConfig
from training.recipe import ALL_LINEAR
from training.tasks import DataError
from training.train import train

SAMPLE = Path(__file__).resolve().parents[1] / "pipelines" / "sample_data"
SAMPLE_DOCUMENTS = sorted(str(p) for p in SAMPLE.glob("documents-*.jsonl"))


def build_parser() -> CliParser:
    p = CliParser(prog="python -m training.sample_run", description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", default="runs/sample", help="Run folder (final/ is the checkpoint to use); "
                   "rerunning the same command resumes.")
    p.add_argument("--max_steps", type=int, default=24, help="Optimizer steps (8 documents each).")
    p.add_argument("--backbone", default="default", help="Backbone to train on ('default': the embedded SmolLM2).")
    p.add_argument("--data", nargs="+", default=SAMPLE_DOCUMENTS,
                   help="Documents (JSONL with a text field); default: the bundled sample.")
    p.add_argument("--num_threads", type=int, default=0, help="torch threads (0: all cores).")
    p.add_argument("--cache_dir", default=None, help="Backbone cache (default $COMMER_CACHE_DIR or ~/.cache/commer).")
    return p


def sample_config(args) -> TrainConfig:
    """The recipe's stage 1, scaled to the sample."""
    return TrainConfig(
        task="pretrain", data=list(args.data), num_documents=1, backbone=args.backbone, num_compression_tokens=8,
        lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=list(ALL_LINEAR), lr_lora=3e-3,
        batch_size=8, micro_batch_size=8, max_steps=args.max_steps, eval_every=max(1, args.max_steps // 3),
        save_every=max(1, args.max_steps // 3), patience=10, val_examples=16, max_answer_tokens=64,
        num_threads=args.num_threads, output_dir=args.output_dir, cache_dir=args.cache_dir)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        summary = train(sample_config(args))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    before, after = summary["initial_val_ppl"], summary["best_val_ppl"]
    print(json.dumps({k: summary[k] for k in ("final", "steps", "initial_val_ppl", "best_val_ppl", "wall_time_s")}))
    print(f"held-out reconstruction perplexity {before:.1f} before training, {after:.1f} after {summary['steps']} "
          f"steps ({summary['wall_time_s']:.0f} s); use it: python -m pipelines.compress_users --output "
          f"commer_output_sample --checkpoint {summary['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
