"""What every ComMer command line shares, light (argparse only, nothing heavier is imported):

    CliParser        errors in one line, `error: ... (see PROG --help)`, exit 2; an unknown flag names the closest
    closest_flag     the known flag nearest to a mistyped one (difflib)
    DefaultsFormatter  the description as written; "(default: X)" only where the help does not already say it

Programs are run as modules, so their usage names them that way: `prog="python -m commer.init"`.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from typing import Iterable, Optional


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every flag with a real default shows it, once."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def closest_flag(flag: str, known: Iterable[str]) -> Optional[str]:
    """The known --flag closest to `flag`, or None when none is close."""
    close = difflib.get_close_matches(flag, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's visible --flags (hidden aliases left out)."""
    return [s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings if s.startswith("--")]


def unknown_flag_message(flag: str, prog: str, known: Iterable[str], also: str = "") -> str:
    """One line for a flag nobody knows, naming the closest one."""
    close = closest_flag(flag, known)
    hint = f"did you mean {close}?" if close else "no flag is close"
    return f"{flag} is not a flag of {prog}{also}: {hint}"


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: ...` on stderr, exit code 2, never the usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flag = next((a.split("=", 1)[0] for a in unknown if a.startswith("-")), None)
            self.error(unknown_flag_message(flag, self.prog, flag_names(self)) if flag
                       else f"unexpected argument {unknown[0]!r}")
        return parsed

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
