"""Create an untrained ComMer checkpoint for any backbone, from the command line.

    python -m commer.init --backbone PATH_OR_GS_URL --num_compression_tokens 8 --output CKPT

The checkpoint records the backbone's identity, so jobs can use it with that backbone (and
refuse any other); its config says trained=false and every job that loads it says so. Train
it with `python -m training.train --init_checkpoint CKPT ...` before expecting personalization.
"""
from __future__ import annotations

import sys
from pathlib import Path

from commer.cli import CliParser
from commer.config import ComMerConfig, LoraSettings


def build_parser() -> CliParser:
    defaults, lora = ComMerConfig(), LoraSettings()
    p = CliParser(prog="python -m commer.init", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True,
                   help="HF causal-LM folder (local or gs://), or 'default' for the embedded SmolLM2.")
    p.add_argument("--output", required=True, help="Checkpoint folder to write (local or gs://).")
    p.add_argument("--num_compression_tokens", type=int, default=defaults.num_compression_tokens,
                   help="K: soft tokens per compressed document (and per user's merged soft prompt).")
    p.add_argument("--max_document_tokens", type=int, default=defaults.max_document_tokens,
                   help="Documents are truncated to this many tokens before compression.")
    p.add_argument("--max_prompt_tokens", type=int, default=defaults.max_prompt_tokens,
                   help="Instruction prompt token limit at generation (the prompt keeps its end).")
    p.add_argument("--max_answer_tokens", type=int, default=defaults.max_answer_tokens,
                   help="Answers are truncated to this many tokens in training and scoring.")
    p.add_argument("--prompt_template", default=defaults.prompt_template,
                   help="'chat' (the tokenizer's chat template) or a format string with {instruction}.")
    p.add_argument("--lora_r", type=int, default=lora.r, help="LoRA rank of the compressor's adapter.")
    p.add_argument("--lora_alpha", type=int, default=lora.alpha, help="LoRA alpha (scale = alpha / r).")
    p.add_argument("--lora_target_modules", nargs="+", default=lora.target_modules,
                   help="Backbone linear layers that get a LoRA adapter.")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="Seed of the compression embeddings' and the adapter's initialisation.")
    p.add_argument("--cache_dir", default=None, help="Backbone cache (default $COMMER_CACHE_DIR or ~/.cache/commer).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing checkpoint at --output.")
    return p


if __name__ == "__main__" and ("--help" in sys.argv or "-h" in sys.argv):
    build_parser().print_help()  # before torch and the backbone code are imported: --help answers at once
    sys.exit(0)

# ---- writing the checkpoint (imported after the flags, so --help never waits for these) -----
from pydantic import ValidationError

from commer import storage
from commer.backbone import BackboneError
from commer.checkpoint import CheckpointError
from commer.model import ComMer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not storage.is_remote(args.output) and (Path(args.output) / "commer_config.json").exists() \
            and not args.overwrite:
        print(f"error: --output {args.output} already holds a checkpoint; choose another folder or pass "
              "--overwrite", file=sys.stderr)
        return 2
    try:
        config = ComMerConfig(
            num_compression_tokens=args.num_compression_tokens, max_document_tokens=args.max_document_tokens,
            max_prompt_tokens=args.max_prompt_tokens, max_answer_tokens=args.max_answer_tokens,
            prompt_template=args.prompt_template, seed=args.seed, trained=False,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, target_modules=args.lora_target_modules),
        )
        model = ComMer.from_backbone(args.backbone, config, cache=args.cache_dir)
        model.save_pretrained(args.output)
    except ValidationError as exc:
        problems = "; ".join(f"--{'_'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except (BackboneError, CheckpointError) as exc:
        print(f"error: --backbone {args.backbone}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote an UNTRAINED checkpoint to {args.output} (backbone {model.identity.describe()}, "
          f"K={model.K}, fingerprint {model.fingerprint()}); train it before expecting personalization")
    return 0


if __name__ == "__main__":
    sys.exit(main())
