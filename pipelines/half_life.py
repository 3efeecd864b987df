"""--half_life_days at plan time: checked against what the previous run recorded, before anything runs.

A refresh adds this run's documents to the previous profiles' weighted sums, so both must weigh by
the same half-life: a different one would silently give profiles that match neither. The half-life
is recorded in the profiles' file metadata (schemas.arrow, `half_life_days`; files written before
recency weighting have none: plain means). Reads Parquet footers only (pipelines.recorded).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from pipelines.recorded import footer_schema, readable, recorded_setting
from pipelines.runtime import CliError


def _days(value: Optional[float]) -> str:
    return "none (plain mean)" if value is None else f"{value:g}"


def recorded_half_life(profile_files: Sequence[str]) -> Optional[float]:
    """The half-life the previous profiles were built with (None = plain mean); shards must agree."""
    def days(meta: dict) -> Optional[float]:
        return None if meta.get("half_life_days") is None else float(meta["half_life_days"])
    return recorded_setting(profile_files, days, "--previous_profiles", "half-lives", _days)[0]


def check_half_life(half_life_days: Optional[float], profile_files: Sequence[str],
                    compression_files: Sequence[str]) -> None:
    """Refuse, in one line naming --half_life_days and the fix: a half-life that is not a positive number, one
    that differs from the previous profiles', and (with a half-life) stored compressions without created_at,
    which deletions need to subtract the weight they were added with."""
    if half_life_days is not None and not (math.isfinite(half_life_days) and half_life_days > 0):
        raise CliError(f"--half_life_days {half_life_days:g}: must be a positive number of days (e.g. 180); leave "
                       "it out for the paper's plain mean")
    if readable(profile_files):
        stored = recorded_half_life(profile_files)
        if stored != half_life_days:
            fix = "leave --half_life_days out" if stored is None else f"pass --half_life_days {stored:g}"
            raise CliError(f"--half_life_days {_days(half_life_days)} differs from the {_days(stored)} the "
                           "--previous_profiles were built with (weights of different half-lives cannot be "
                           f"combined); {fix}, or recompute every profile with a full run (all documents, no "
                           "--previous_profiles)")
    if half_life_days is not None:
        for path in readable(compression_files):
            if "created_at" not in footer_schema(path).names:
                raise CliError(f"--previous_document_compressions {path} has no created_at (written before recency "
                               "weighting), so deletions cannot subtract the weight a document was added with; "
                               "recompute with a full run and --document_compressions_output")
