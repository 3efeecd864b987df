"""One state per output folder (DESIGN.md invariant 9): a reader sees the previous run or the new one,
never both, never a partial file, whatever moment a job is killed.

Design: a *table folder* (OUTPUT/profiles, a --document_compressions_output folder) holds

    TABLE/CURRENT              the committed state: the run folder(s) it is made of, one name a line
    TABLE/RUN_ID/*.parquet     one run's shards (Beam's beam-temp-* folder is created next to them)

A run writes only inside its own TABLE/RUN_ID/ folder, which no reader looks at until the run has
finished. Then `publish` switches the one small pointer file CURRENT (written to a temporary name and
renamed over the old one: an atomic replace on a local disk, a single object write on GCS) — that
switch is the commit point — and only after it removes everything else in the folder: older run
folders, flat shards of the pre-CURRENT layout, beam-temp-* folders and temp files that killed runs
left. So:

    killed before the switch  → CURRENT still names the previous run; the partial run folder is ignored
                                by every reader and removed by the next successful run
    killed after the switch   → CURRENT names the new run; the old run folders are ignored, then removed

Readers (`current_shards` here, `schemas.read_parquet`, `pipelines.io.parquet_shards`, hence
--previous_profiles, --previous_document_compressions and generate --profiles) follow CURRENT and read
only the top level of the run folders it names. A folder without CURRENT is read the old way (its
top-level *.parquet), so folders written before this layout keep working; their first run under it
moves them over.

`phase(name)` marks the moments the kill tests stop a job at (only when COMMER_TEST_KILL_AT names it).
"""
from __future__ import annotations

import os
import signal

from apache_beam.io.filesystems import FileSystems

POINTER = "CURRENT"
KILL_AT = "COMMER_TEST_KILL_AT"  # tests only: SIGKILL this process when it reaches the named phase
PHASES = ("model_loaded", "compressing", "writing", "written", "switched")


def phase(name: str) -> None:
    """A named moment of a job; the kill tests set COMMER_TEST_KILL_AT=name to SIGKILL the job there."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def run_folder(table: str, run_id: str) -> str:
    """Where one run writes a table's shards (nothing reads it until `publish` names it in CURRENT)."""
    return f"{table.rstrip('/')}/{run_id}"


def current_runs(table: str) -> list[str] | None:
    """The run folders CURRENT names, or None when the folder has no CURRENT (the legacy flat layout)."""
    path = f"{table.rstrip('/')}/{POINTER}"
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return [line.strip() for line in f.read().decode("utf-8").splitlines() if line.strip()]
    except Exception:  # an unreachable folder reads as no state; the caller's own error names the flag
        return None


def _top_level(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # a missing folder
        return []


def current_shards(table: str, pattern: str = "*.parquet") -> list[str] | None:
    """The committed shards of a table folder (CURRENT's run folders, top level only), or None without CURRENT."""
    runs = current_runs(table)
    if runs is None:
        return None
    return sorted(f for run in runs for f in _top_level(f"{table.rstrip('/')}/{run}/{pattern}"))


def _write_atomically(path: str, data: bytes, run_id: str) -> None:
    temporary = f"{path}.{run_id}.tmp"
    with FileSystems.create(temporary) as f:
        f.write(data)
    FileSystems.rename([temporary], [path])  # os.rename locally (atomic replace); copy + delete on GCS


def publish(table: str, run_id: str, keep_previous: bool = False) -> None:
    """Make `run_id`'s folder the table's state (the atomic switch of CURRENT), then remove everything else.

    keep_previous: the new state is the previous one plus this run (a table a run only adds to, e.g.
    document compressions of a refresh that did not carry the earlier ones); legacy flat shards are
    then moved into a run folder of their own first, so they stay part of the state."""
    table = table.rstrip("/")
    runs = [run_id]
    if keep_previous:
        previous = current_runs(table)
        if previous is None:
            legacy = _top_level(f"{table}/*.parquet")
            if legacy:
                moved = run_folder(table, f"legacy-{run_id}")
                if "://" not in moved:
                    FileSystems.mkdirs(moved)
                FileSystems.rename(legacy, [f"{moved}/{f.rsplit('/', 1)[-1]}" for f in legacy])
                previous = [f"legacy-{run_id}"]
        runs = sorted(set(previous or []) | {run_id})
    _write_atomically(f"{table}/{POINTER}", "".join(f"{r}\n" for r in runs).encode(), run_id)
    phase("switched")
    remove_all_but(table, runs)


def remove_all_but(table: str, runs: list[str]) -> None:
    """Delete whatever a table folder holds besides CURRENT and the named run folders (older runs,
    legacy flat shards, beam-temp-* folders and temp files of killed runs)."""
    keep = set(runs) | {POINTER}
    entries = _top_level(f"{table}/*") + _top_level(f"{table}/**")
    if "://" not in table and os.path.isdir(table):  # local matches list files only: add (empty) folders
        entries += [f"{table}/{name}" for name in os.listdir(table)]
    stale = [p for p in entries if p[len(table) + 1:].split("/", 1)[0] not in keep]
    for path in sorted(set(stale), key=len):  # parents first: a deleted folder takes its files along
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except Exception:  # gone already (deleted with its folder) or removed by a concurrent reader's cleanup
            pass


def remove_temp_folders(folder: str) -> None:
    """Delete the beam-temp-* folders killed runs left in an output folder (after a successful run)."""
    folder = folder.rstrip("/")
    entries = _top_level(f"{folder}/beam-temp-*") + _top_level(f"{folder}/beam-temp-*/**")
    if "://" not in folder and os.path.isdir(folder):
        entries += [f"{folder}/{name}" for name in os.listdir(folder) if name.startswith("beam-temp-")]
    for path in sorted({p for p in entries if p[len(folder) + 1:].startswith("beam-temp-")}, key=len):
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except Exception:  # gone already
            pass
