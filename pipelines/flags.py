"""Job flags that coexist in one process.

Beam registers the flags of every PipelineOptions subclass ever imported on one shared parser,
so two jobs that both define --output (or --batch_size) clash as soon as both modules are
imported (a test session, a notebook). Jobs therefore register their flags tolerantly (a flag
another job already registered is left to it), and read their own values with a private
parser, so each job always gets its own defaults and types whatever else is loaded.
"""
from __future__ import annotations

import argparse
from typing import Sequence


class _Tolerant:
    """A parser view whose add_argument skips option strings already registered."""

    def __init__(self, parser):
        self._parser = parser

    def add_argument(self, *flags, **kwargs):
        if any(f in self._parser._option_string_actions for f in flags):
            return None
        return self._parser.add_argument(*flags, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)


def tolerant(parser):
    return parser if isinstance(parser, _Tolerant) else _Tolerant(parser)


def parse_flags(options_cls, argv: Sequence[str]) -> argparse.Namespace:
    """This job's flags only, parsed with its own defaults (other arguments are ignored)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options_cls._add_argparse_args(parser)
    return parser.parse_known_args(list(argv))[0]


def print_help(prog: str, description: str, groups: dict) -> None:
    """--help for a job: its flags by group (name -> PipelineOptions subclass)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any Beam pipeline flag (--runner, --direct_num_workers, ...) is also "
                                            "accepted.")
    for name, cls in groups.items():
        cls._add_argparse_args(parser.add_argument_group(name))
    parser.print_help()
