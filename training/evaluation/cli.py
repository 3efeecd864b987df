"""The evaluations' shared command line: parse, set threads, run, print the table; progress lines."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import torch

from commer.checkpoint import CheckpointError
from training.tasks import DataError


def evaluation_cli(argv: list[str] | None, build_parser: Callable, run: Callable) -> int:
    """Run one evaluation from its flags; a data or checkpoint problem is one line (exit 2), never
    a traceback. `args.argv` keeps the flags, for the command line the table records."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.num_threads or max(1, os.cpu_count() or 1))
    try:
        result = run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    return 0


def progress(label: str) -> Callable[[int, int], None]:
    """A `report(done, total)` that prints 'label: done/total examples' on stderr (one updating line on a terminal)."""
    tty = sys.stderr.isatty()
    start = "\r" if tty else ""

    def report(done: int, total: int) -> None:
        end = "" if tty and done < total else "\n"
        print(f"{start}  {label}: {done}/{total} examples", end=end, file=sys.stderr, flush=True)
    return report
