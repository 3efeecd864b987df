"""The offline dry run (issue 26): `--dry_run=True` builds the job graph without reading anything remote.

A Dataflow dry run checks that a job's graph builds (flags, wiring, pickling) on a laptop with no
network and no credentials, with the very command that will run nightly. Everything a job reads
while planning (input listings, Delta logs, Parquet footers, the checkpoint's config) is read only
where it is local; a remote one stands for itself:

    a glob                 → the glob itself (the graph reads it; the dry run never runs it)
    an input table         → a glob of its files (TABLE/*/*.parquet)
    an output table        → planned as a new table (its version is not read)
    footer checks          → skipped (fingerprints, unique users, half-life)
    a remote checkpoint    → the bundled checkpoint's config stands in (its K and d size the schemas)

`options.parse` switches this on for a dry run and off otherwise, so every plan function asks
`stands_in(path)` rather than carrying the flag through.
"""
from __future__ import annotations

_dry_run = False


def set_dry_run(value: bool) -> None:
    global _dry_run
    _dry_run = bool(value)


def is_remote(path: str | None) -> bool:
    """A URL with a scheme other than file:// (gs://, s3://, memory://, ...)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def stands_in(path: str | None) -> bool:
    """True when `path` is remote and this is a dry run: plan with the path itself, read nothing."""
    return _dry_run and is_remote(path)
