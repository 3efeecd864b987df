"""Remove the files no recent version of an output table needs: older versions', and killed or rejected runs'.

    python -m pipelines.vacuum OUTPUT/profiles --retention_hours 168            # list what would go
    python -m pipelines.vacuum OUTPUT/profiles --retention_hours 168 --delete   # and delete it

A job never deletes a file (so a reader of the previous version, or time travel within the retention, keeps
working); this does, through Delta's own VACUUM (delta-rs, `full` mode: files no version refers to are
removed too, e.g. a killed run's). Versions older than the retention can no longer be read afterwards.
A retention shorter than a running job's age would delete that job's files before its commit: keep it longer
than your longest job (Delta's default, 168 hours, is the default here; below it you must say so).
"""
from __future__ import annotations

import sys

from deltalake import DeltaTable

from commer.cli import CliParser
from pipelines.runtime import CliError, run_cli
from schemas.tables import is_table

DEFAULT_RETENTION_HOURS = 168

parser = CliParser(prog="python -m pipelines.vacuum", description=__doc__)
parser.add_argument("tables", nargs="+", help="Delta table folders (e.g. OUTPUT/profiles, OUTPUT/dead_letters).")
parser.add_argument("--retention_hours", type=int, default=DEFAULT_RETENTION_HOURS,
                    help="Keep every file a version of the last N hours needs (default 168, Delta's).")
parser.add_argument("--delete", action="store_true", help="Delete the files (without it: only list them).")


def vacuum(table: str, retention_hours: int, delete: bool) -> list[str]:
    """The files of `table` no version within `retention_hours` needs (deleted when `delete`)."""
    if not is_table(table):
        raise CliError(f"{table} is not a Delta table (no _delta_log): pass a table folder such as OUTPUT/profiles")
    if retention_hours < 0:
        raise CliError(f"--retention_hours must be 0 or more, got {retention_hours}")
    return DeltaTable(table).vacuum(retention_hours=retention_hours, dry_run=not delete, full=True,
                                    enforce_retention_duration=False)


def main(argv: list[str]) -> int:
    flags = parser.parse_args(argv)
    for table in flags.tables:
        files = vacuum(table.rstrip("/"), flags.retention_hours, flags.delete)
        verb = "deleted" if flags.delete else "would delete (add --delete)"
        print(f"{table}: {verb} {len(files)} files older than {flags.retention_hours} h that no version needs")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
