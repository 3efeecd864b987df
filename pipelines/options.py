"""Flags the Beam way (as Beam's wordcount.py): a job parses its own flags (pipelines.flags) with
argparse's parse_known_args, and everything it does not know goes to PipelineOptions (--runner,
--project, --num_workers, ...). No PipelineOptions subclasses, so jobs never share (or fight over)
one global flag parser, whatever else is imported into the process.

A flag neither the job nor Beam knows is an error naming the closest flag (Beam itself would only
log "Discarding unparseable args" and run with the defaults).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from commer.cli import flag_names, unknown_flag_message
from pipelines.flags import DEAD_LETTER_FLAG, CliError  # noqa: F401 (DEAD_LETTER_FLAG: one name)
from pipelines.offline import set_dry_run
from pipelines.preflight import run_checks

# With no --runner, jobs run on the FnApiRunner: the engine Beam 2.77's DirectRunner uses for
# batch pipelines, minus its first step of downloading the Prism runner binary from GitHub
# (which hangs or fails on machines without internet, e.g. batch workers behind a firewall).
LOCAL_RUNNER = "FnApiRunner"


def check_batching(flags: argparse.Namespace) -> None:
    """The batching flags make sense together, or one line naming the flag and the fix."""
    for name in ("max_batch_tokens", "batch_size", "length_bucket_tokens", "batch_shards"):
        value = getattr(flags, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name} must be positive, got {value}")
    if flags.packed and flags.max_batch_tokens is None:
        raise CliError("--packed needs --max_batch_tokens N, the length of one packed sequence (e.g. "
                       "--max_batch_tokens 512 on CPU)")


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
    refuse_unknown(parser, rest)
    for name in required:
        if not getattr(flags, name):
            raise CliError(f"--{name} is required (see {parser.prog} --help)")
    options = PipelineOptions(with_local_runner(rest))
    set_dry_run(options.get_all_options().get("dry_run"))  # nothing remote is read to build a dry run's graph
    if check:
        run_checks(flags, options)
    return flags, options


def beam_flag_parser() -> argparse.ArgumentParser:
    """Every flag Beam's PipelineOptions know (as PipelineOptions.get_all_options builds them)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 (Beam's own way of collecting its flags)
    return parser


def refuse_unknown(parser: argparse.ArgumentParser, rest: Sequence[str]) -> None:
    """A CliError for the first argument that neither the job nor Beam knows, naming the closest flag."""
    beam = beam_flag_parser()
    _, unknown = beam.parse_known_args(list(rest))
    if not unknown:
        return
    flag = next((a.split("=", 1)[0] for a in unknown if a.startswith("-")), None)
    if flag is None:
        raise CliError(f"unexpected argument {unknown[0]!r}: every input is a flag, e.g. --output FOLDER "
                       f"(see {parser.prog} --help)")
    message = unknown_flag_message(flag, parser.prog, flag_names(parser) + flag_names(beam), also=" nor of Beam")
    raise CliError(f"{message} (see {parser.prog} --help)")


def dead_letter_folder(flags) -> str:
    return (flags.dead_letter_output or f"{flags.output.rstrip('/')}/dead_letters").rstrip("/")
