"""Every job's command line, light: argparse (and commer.cli) and nothing heavier, so `--help` answers in a fraction
of a second (a job module defines its parser from these, answers `--help`, and only then imports
Beam, torch and the model code).

    job_parser(prog, description, required)   the parser: one-line errors (CliError), defaults shown,
                                              required flags marked in the usage line and the help
    add_*_flags                               flag groups shared by the jobs
    answer_help(parser)                       the fast path: print the help and exit before the heavy imports

pipelines.options turns the parsed flags into PipelineOptions (unknown flags refused there, naming
the closest one) and runs the preflight checks.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from typing import Sequence

from commer.cli import CliParser, DefaultsFormatter, flag_names  # noqa: F401 (flag_names: pipelines.options)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "WARNING"
DEAD_LETTER_FLAG = "--dead_letter_output"
# In-prompt prompts hold whole documents: the checkpoint's instruction limit (sized for
# ComMer's short prompts) would cut them and make the baseline look cheaper than it is.
IN_PROMPT_MAX_TOKENS = 2048
BEAM_EPILOG = ("Any Beam pipeline flag (--runner, --project, --region, --temp_location, --setup_file, "
               "--num_workers, --direct_num_workers, ...) is also accepted; any other flag is an error.")


class CliError(Exception):
    """A user error with a fix; the CLI prints it (naming the flag) in one line, without a traceback."""


class JobParser(CliParser):
    """A job's parser: its errors are CliErrors, so runtime.run_cli prints them in one line like every other
    CLI error of a job (unknown flags are refused later, by pipelines.options, once Beam's are known too)."""

    def __init__(self, *args, required: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.required_flags = tuple(required)

    def error(self, message: str):
        raise CliError(f"{message} (see {self.prog} --help)")


def job_parser(prog: str, description: str, required: Sequence[str] = ()) -> JobParser:
    """A job's parser. `required` flags are named in the usage line and their help starts "Required."
    (the job checks them after --help, so `--help` alone works)."""
    usage = " ".join(["%(prog)s", *(f"--{name} {name.upper()}" for name in required), "[flags]"])
    parser = JobParser(prog=prog, usage=usage, description=description, add_help=False, allow_abbrev=False,
                       formatter_class=DefaultsFormatter, epilog=BEAM_EPILOG, required=required)
    parser.add_argument("--help", "-h", action="store_true", help="Show this help and exit.")
    parser.add_argument("--log_level", default=DEFAULT_LOG_LEVEL, choices=LOG_LEVELS, type=str.upper,
                        help="Level for library messages (Beam, transformers); ComMer's own lines stay at INFO "
                             "unless this is ERROR")
    return parser


def required_help(text: str) -> str:
    """A required flag's help: says so first."""
    return f"Required. {text}"


def answer_help(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> None:
    """Print the help and exit 0 when asked (the fast path, before a job's heavy imports)."""
    if wants_help(parser, sys.argv[1:] if argv is None else argv):
        sys.exit(0)


def wants_help(parser: argparse.ArgumentParser, argv: Sequence[str]) -> bool:
    """Print the job's --help when asked; True if it did."""
    if "--help" in argv or "-h" in argv:
        parser.print_help()
        return True
    return False


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
                       help="Backbone precision. auto: bfloat16 on CUDA, float32 on CPU (compress_users: resolved "
                            "once by the launcher for --device as it sees it, recorded with the profiles; generate: "
                            "on each worker).")
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
                       help="--merge=retrieved: compress_users' --document_compressions_output Delta table (its latest "
                            "version), made with this --checkpoint (fingerprint checked).")
    group.add_argument("--retrieval", default=None, choices=["bm25", "similarity"],
                       help="--merge=retrieved ranking (default bm25): bm25 between the instruction and the documents' "
                            "text (needs --documents, matched by user_id + doc_id; a query whose user has no stored "
                            "compression with text is answered unpersonalized and counted in the report); "
                            "similarity: cosine between the instruction's compression and the stored ones (no text "
                            "needed).")


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
                       help="Width of the length buckets the batch keys are planned from (by default adjacent "
                            "buckets are joined until they hold 48 batches of documents, and larger ones split). "
                            "A key's documents are sorted by length, 64 batches' worth at a time, before batching, "
                            "so the width bounds the padding only in a key larger than that.")
    group.add_argument("--batch_shards", type=int, default=None,
                       help="Keys per length bucket, each planned into batches by one worker (default: from the "
                            "data, one key per 24 to 48 batches of documents: a small job forms the batches of one "
                            "sorted pass, a large one spreads over as many workers as it has work for). A fixed "
                            "N gives every bucket N keys, each ending in a partly filled batch.")


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


# ---- console scripts (pyproject.toml): the same programs as `python -m pipelines.JOB` ------------------

def _run_as_main(module: str) -> None:
    """Run a job module exactly as `python -m` does, so its --help fast path applies to the console script too."""
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main_compress_users() -> None:
    _run_as_main("pipelines.compress_users")


def main_generate() -> None:
    _run_as_main("pipelines.generate")


def main_evaluate() -> None:
    _run_as_main("pipelines.evaluate")


def main_vacuum() -> None:
    _run_as_main("pipelines.vacuum")
