"""Flags the Beam way (as Beam's wordcount.py): a job parses its own flags with argparse's
parse_known_args, and everything it does not know goes to PipelineOptions (--runner, --project,
--num_workers, ...). No PipelineOptions subclasses, so jobs never share (or fight over) one
global flag parser, whatever else is imported into the process.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import logs
from pipelines.preflight import run_checks
from pipelines.runtime import CliError

# With no --runner, jobs run on the FnApiRunner: the engine Beam 2.77's DirectRunner uses for
# batch pipelines, minus its first step of downloading the Prism runner binary from GitHub
# (which hangs or fails on machines without internet, e.g. batch workers behind a firewall).
LOCAL_RUNNER = "FnApiRunner"
DEAD_LETTER_FLAG = "--dead_letter_output"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every flag with a real default shows it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, add_help=False, allow_abbrev=False,
        formatter_class=HelpFormatter,
        epilog="Any Beam pipeline flag (--runner, --project, --region, --temp_location, --setup_file, "
               "--num_workers, --direct_num_workers, ...) is also accepted.")
    parser.add_argument("--log_level", default=logs.DEFAULT_LEVEL, choices=logs.LEVELS, type=str.upper,
                        help="Level for library messages (Beam, transformers); ComMer's own lines stay at INFO "
                             "unless this is ERROR")
    return parser


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and place the ComMer model (every job that runs the model)."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", default=None,
                       help="ComMer checkpoint folder (local or gs://). Default: the checkpoint bundled with the "
                            "package (a seeded untrained one if none is bundled).")
    group.add_argument("--backbone", default=None,
                       help="Override the checkpoint's backbone reference (an HF folder, local or gs://). It must "
                            "be the same model: its content hash is checked.")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                       help="Backbone precision. auto: bfloat16 on CUDA, float32 on CPU (decided on each worker).")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="Where the model runs on each worker. auto: CUDA when the worker has it, else CPU.")
    group.add_argument("--cache_dir", default=None,
                       help="Where converted/downloaded backbones are cached (default $COMMER_CACHE_DIR or "
                            "~/.cache/commer).")


def add_merge_flags(parser: argparse.ArgumentParser) -> None:
    """generate's query-time merge (issue 16): which of a user's stored compressions make a query's soft prompt."""
    group = parser.add_argument_group("query-time merge (--mode=commer)")
    group.add_argument("--merge", default="all", choices=["all", "retrieved"],
                       help="all: the user's profile (the mean of every document); retrieved: per query, the mean "
                            "of only the user's --top_m most relevant stored document compressions (same K soft "
                            "tokens, same generation cost).")
    group.add_argument("--top_m", type=int, default=None,
                       help="--merge=retrieved: compressions merged per query; M at least a user's document count "
                            "gives exactly their profile's mean.")
    group.add_argument("--document_compressions", default=None,
                       help="--merge=retrieved: compress_users' --document_compressions_output folder (CURRENT is "
                            "followed), made with this --checkpoint (fingerprint checked).")
    group.add_argument("--retrieval", default=None, choices=["bm25", "similarity"],
                       help="--merge=retrieved ranking (default bm25): bm25 between the instruction and the documents' "
                            "text (needs --documents, matched by user_id + doc_id); similarity: cosine between the "
                            "instruction's compression and the stored ones (no text needed).")


def add_batching_flags(parser: argparse.ArgumentParser) -> None:
    """How compress_users cuts documents into model calls (pipelines.inference.Batching)."""
    group = parser.add_argument_group("batching")
    group.add_argument("--max_batch_tokens", type=int, default=None,
                       help="Positions per compression batch: a document costs its tokens + K, and a padded batch "
                            "counts its padding (rows × longest row). Default: 1024 on CPU (about the 16 sample "
                            "documents batched before), 65536 on CUDA, by each worker's device. With --packed: the "
                            "length of one packed sequence.")
    group.add_argument("--packed", action="store_true",
                       help="Padding-free packing: each batch's documents are concatenated into one sequence, each "
                            "attending only to itself (same compressions). Needs --max_batch_tokens; on CPU it pays "
                            "only for packs up to ~512 positions (benchmarks/RESULTS.md §6).")
    group.add_argument("--batch_size", type=int, default=None,
                       help="At most this many documents per batch (default: no limit; --max_batch_tokens sizes "
                            "the batches).")
    group.add_argument("--length_bucket_tokens", type=int, default=32,
                       help="Documents are batched with others whose token count falls in the same bucket of this "
                            "width, so padding per document is below this many tokens.")
    group.add_argument("--batch_shards", type=int, default=8,
                       help="Parallel batch streams per length bucket (more = more parallelism, more "
                            "partially-filled batches).")


def check_batching(flags: argparse.Namespace) -> None:
    """The batching flags make sense together, or one line naming the flag and the fix."""
    for name in ("max_batch_tokens", "batch_size", "length_bucket_tokens", "batch_shards"):
        value = getattr(flags, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name} must be positive, got {value}")
    if flags.packed and flags.max_batch_tokens is None:
        raise CliError("--packed needs --max_batch_tokens N, the length of one packed sequence (e.g. "
                       "--max_batch_tokens 512 on CPU)")


def add_dead_letter_flag(parser) -> None:
    """The one dead-letter flag of every job (--dead_letters is kept as a hidden alias)."""
    parser.add_argument(DEAD_LETTER_FLAG, dest="dead_letter_output", default=None,
                        help="Delta table folder for rejected records (stage, reason, ids, raw record). Default: "
                             "OUTPUT/dead_letters. It may contain document text: protect it like the input.")
    parser.add_argument("--dead_letters", dest="dead_letter_output", help=argparse.SUPPRESS)
    parser.add_argument("--max_dead_letter_fraction", type=_fraction, default=0.5,
                        help="Above this share of an input's records dead-lettered, the job exits non-zero, naming "
                             "the most common reason, and commits nothing but its dead letters (1 never rejects).")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def add_recency_flag(parser: argparse.ArgumentParser) -> None:
    """--half_life_days: recency-weighted profiles (commer.recency); default the paper's plain mean."""
    parser.add_argument("--half_life_days", type=float, default=None, help="Weigh each document by "
                        "2^(-age/half-life), age = days from its created_at to this run's date, instead of the "
                        "paper's plain mean (the default). A document without created_at is dated at the run that "
                        "first merges it, a future one at the run's date (both counted). A refresh must use the "
                        "half-life its --previous_profiles were built with.")


def with_local_runner(argv: Sequence[str]) -> list[str]:
    """argv with the local runner added when no runner was named."""
    argv = list(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        argv.append(f"--runner={LOCAL_RUNNER}")
    return argv


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], required: Sequence[str] = (),
          check: bool = False) -> tuple[argparse.Namespace, PipelineOptions]:
    """(the job's flags, PipelineOptions from every other argument); `required` flags must be given.
    With `check`, the preflight checks run too (remote paths, checkpoint ↔ backbone): one-line errors
    before anything is planned."""
    flags, rest = parser.parse_known_args(list(argv))
    for name in required:
        if not getattr(flags, name):
            raise CliError(f"--{name} is required (see --help)")
    options = PipelineOptions(with_local_runner(rest))
    if check:
        run_checks(flags, options)
    return flags, options


def wants_help(parser: argparse.ArgumentParser, argv: Sequence[str]) -> bool:
    """Print the job's --help when asked; True if it did."""
    if "--help" in argv or "-h" in argv:
        parser.print_help()
        return True
    return False


def dead_letter_folder(flags) -> str:
    return (flags.dead_letter_output or f"{flags.output.rstrip('/')}/dead_letters").rstrip("/")
