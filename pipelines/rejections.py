"""A run that fails its records fails (DESIGN.md invariant 11).

After the pipeline, the launcher counts the run's dead letters by reason (reading only the `stage` and
`reason` columns of the files the run wrote into its dead-letter table) and checks every input stream:

    above --max_dead_letter_fraction     the job exits non-zero with one line naming the stream, the fraction,
                                         the most common reason and the dead-letter table; only the dead
                                         letters are committed (they explain the failure), no output table
    zero good records                    an output table is never replaced by an empty one

The console report lists the top reasons with their counts either way.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.runtime import CliError
from pipelines.tables import OutputTable, written_files

DEFAULT_MAX_FRACTION = 0.5
TOP = 5


class RejectedRunError(CliError):
    """Too many records were rejected, or none was usable: nothing but the dead letters is committed."""


@dataclass
class Stream:
    """One input of a run: its flag, records read, records dead-lettered."""

    flag: str
    read: int
    rejected: int

    @property
    def fraction(self) -> float:
        return self.rejected / self.read if self.read else 0.0


def reason_key(stage: str, reason: str) -> str:
    """A dead letter's reason with its positions and sizes as N, so that letters of one kind count together."""
    return f"{stage}: {re.sub(r'[0-9]+', 'N', reason)}"


def top_reasons(table: OutputTable, top: int = TOP) -> list[list]:
    """[[reason, count], ...], most common first, over the dead letters this run wrote."""
    counts: Counter = Counter()
    for meta in written_files(table):
        with FileSystems.open(meta.path) as f:
            columns = pq.ParquetFile(f).read(columns=["stage", "reason"]).to_pydict()
        counts.update(reason_key(s, r) for s, r in zip(columns["stage"], columns["reason"]))
    return [[reason, n] for reason, n in counts.most_common(top)]


def check_run(streams: list[Stream], max_fraction: float, good: int, good_label: str, summary: dict,
              dead_letters: OutputTable) -> RejectedRunError | None:
    """The error that rejects this run (recorded in `summary`), or None when it may commit its outputs."""
    reasons = summary.get("dead_letter_reasons") or []
    common = f"most common reason: {reasons[0][0]!r} ({reasons[0][1]}×)" if reasons else "no dead letter written"
    where = f"dead letters: {dead_letters.path}"
    message = None
    for stream in streams:
        if stream.read and stream.fraction > max_fraction:
            message = (f"{stream.flag}: {stream.rejected} of {stream.read} records dead-lettered "
                       f"({stream.fraction:.0%}, above --max_dead_letter_fraction={max_fraction:g}); {common}; "
                       f"{where}; no output table was changed")
            break
    if message is None and good == 0:
        message = (f"no {good_label} to write ({', '.join(f'{s.flag}: {s.read} read, {s.rejected} dead-lettered' for s in streams)}); "
                   f"{common}; {where}; the {good_label} table was not replaced by an empty one")
    summary["status"] = "rejected" if message else "committed"
    if message:
        summary["rejected"] = message
    return RejectedRunError(message) if message else None


def report_reasons(summary: dict) -> None:
    """The console lines of the top dead-letter reasons."""
    for reason, count in summary.get("dead_letter_reasons") or []:
        print(f"  dead letters: {count:>8}  {reason}")
