"""One state per output folder (DESIGN.md invariant 9): a reader sees the previous run or the new one,
never both, never a partial file, whatever moment a job is killed.

Design: a *table folder* (OUTPUT/profiles, a --document_compressions_output folder, generate's and
evaluate's --output, every --dead_letter_output) holds

    TABLE/CURRENT              the committed state: the run folder(s) it is made of, one name a line
    TABLE/RUN_ID/...           one run's shards (Beam's beam-temp-* folder is created next to them)

A run writes only inside its own TABLE/RUN_ID/ folder, which no reader looks at until the run has
finished. Then `publish` switches the one small pointer file CURRENT (written to a temporary name and
renamed over the old one: an atomic replace on a local disk, a single object write on GCS) — that
switch is the commit point — and only after it removes what it recognises as stale: other run folders
(named by run id), flat shards of the pre-CURRENT layout (the table's `legacy` patterns), beam-temp-*
folders and temporary pointer files. Anything else in the folder (a job's summary, plots, the default
dead_letters/ subfolder, a user's own files) is never touched. So:

    killed before the switch  → CURRENT still names the previous run; the partial run folder is ignored
                                by every reader and removed by the next successful run
    killed after the switch   → CURRENT names the new run; the old run folders are ignored, then removed

Two tables, one commit (compress_users' profiles + document compressions). A refresh reads both, so
they must pair up whatever moment the job is killed, yet no filesystem switches two pointers in one
step. The profiles' switch is the single commit point: before it, `publish_profiles` writes PAIRED
(the compression run folders these profiles were made with) into the profiles' run folder, so it is
committed by the same switch; then the compressions' CURRENT is switched, then both tables are
cleaned. Since the same run id names both run folders, the pairing needs no paths. A refresh resolves
--previous_document_compressions through the committed profiles (`committed_runs(table,
paired_with=profiles)`): it reads the runs PAIRED names when the table still holds them all, else
the table's CURRENT (a table written elsewhere, or before PAIRED existed). So:

    killed before the profiles' switch  → both tables read as the previous run (PAIRED of the old profiles)
    killed between the two switches     → the profiles are the new run; the compressions' CURRENT still
                                          names the old run (a plain reader sees that whole old state),
                                          but a refresh pairs the new profiles with the new compression
                                          run, which nothing removes before the compressions' switch
    killed after both switches          → both new; old run folders are removed by the clean-up or the
                                          next successful run

Readers (`current_shards` here, `schemas.read_parquet`, `pipelines.io.parquet_shards`, hence
--previous_profiles, --previous_document_compressions, generate --profiles and evaluate --predictions)
follow CURRENT and read only the top level of the run folders it names. A folder without CURRENT is
read the old way (its top-level shards), so folders written before this layout keep working; their
first run under it moves them over.

`phase(name)` marks the moments the kill tests stop a job at (only when COMMER_TEST_KILL_AT names it).
"""
from __future__ import annotations

import json
import os
import re
import signal

from apache_beam.io.filesystems import FileSystems

POINTER = "CURRENT"
PAIRED = "PAIRED"  # in a profiles run folder: the document-compression run folders it pairs with
KILL_AT = "COMMER_TEST_KILL_AT"  # tests only: SIGKILL this process when it reaches the named phase
# compress_users passes all five; generate and evaluate the last two ("written": the pipeline finished,
# nothing switched; "switched": the commit happened, nothing cleaned up).
PHASES = ("model_loaded", "compressing", "writing", "written", "switched")
# What runtime.new_run_id makes (and the legacy-RUN_ID folder publish moves flat shards into).
RUN_NAME = re.compile(r"^(legacy-)?\d{8}T\d{6}-[0-9a-f]{8}$")


def phase(name: str) -> None:
    """A named moment of a job; the kill tests set COMMER_TEST_KILL_AT=name to SIGKILL the job there."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def run_folder(table: str, run_id: str) -> str:
    """Where one run writes a table's shards (nothing reads it until `publish` names it in CURRENT)."""
    return f"{table.rstrip('/')}/{run_id}"


def _read_text(path: str) -> str | None:
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8")
    except Exception:  # an unreachable folder reads as no state; the caller's own error names the flag
        return None


def current_runs(table: str) -> list[str] | None:
    """The run folders CURRENT names, or None when the folder has no CURRENT (the legacy flat layout)."""
    text = _read_text(f"{table.rstrip('/')}/{POINTER}")
    return None if text is None else [line.strip() for line in text.splitlines() if line.strip()]


def paired_runs(profiles: str) -> list[str] | None:
    """The document-compression runs the committed profiles under `profiles` (a profiles table, or the job's
    --output with profiles/ inside) were made with; None when they record none."""
    for table in (f"{profiles.rstrip('/')}/profiles", profiles.rstrip("/")):
        runs = current_runs(table)
        if runs:
            text = _read_text(f"{table}/{runs[-1]}/{PAIRED}")
            return None if text is None else list(json.loads(text)["runs"])
    return None


def committed_runs(table: str, paired_with: str | None = None) -> list[str] | None:
    """A table's committed run folders: those the profiles at `paired_with` pair with, when this table still
    holds every one of them (the commit of a run killed between its two switches), else CURRENT's."""
    table = table.rstrip("/")
    paired = paired_runs(paired_with) if paired_with else None
    if paired and all(_top_level(f"{table}/{run}/*") for run in paired):
        return paired
    return current_runs(table)


def _top_level(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # a missing folder
        return []


def current_shards(table: str, pattern: str = "*.parquet", paired_with: str | None = None) -> list[str] | None:
    """The committed shards of a table folder (its committed run folders, top level only), or None without a
    committed state (the legacy flat layout)."""
    runs = committed_runs(table, paired_with)
    if runs is None:
        return None
    return sorted(f for run in runs for f in _top_level(f"{table.rstrip('/')}/{run}/{pattern}"))


def _write_atomically(path: str, data: bytes, run_id: str) -> None:
    temporary = f"{path}.{run_id}.tmp"
    with FileSystems.create(temporary) as f:
        f.write(data)
    FileSystems.rename([temporary], [path])  # os.rename locally (atomic replace); copy + delete on GCS


def _switch(table: str, runs: list[str], run_id: str) -> None:
    _write_atomically(f"{table}/{POINTER}", "".join(f"{r}\n" for r in runs).encode(), run_id)


def publish(table: str, run_id: str, legacy: tuple[str, ...] = ("*.parquet",)) -> None:
    """Make `run_id`'s folder the table's state (the atomic switch of CURRENT), then remove the stale rest.
    `legacy`: the top-level shard names of the table's pre-CURRENT layout (removed after the switch)."""
    table = table.rstrip("/")
    _switch(table, [run_id], run_id)
    phase("switched")
    remove_stale(table, [run_id], legacy)


def publish_profiles(profiles: str, run_id: str, compressions: str | None = None,
                     keep_previous_compressions: bool = False, previous_profiles: str | None = None) -> None:
    """compress_users' commit: profiles and (optionally) document compressions as one state (see above).

    keep_previous_compressions: the compressions' new state is their previous one plus this run (a refresh
    that did not carry the earlier ones); their previous state is resolved through `previous_profiles`, and
    legacy flat shards are first moved into a run folder of their own, so they stay part of it."""
    profiles = profiles.rstrip("/")
    runs = [run_id]
    if compressions:
        compressions = compressions.rstrip("/")
        if keep_previous_compressions:
            runs = sorted(set(_previous_state(compressions, run_id, previous_profiles)) | {run_id})
        _write_atomically(f"{run_folder(profiles, run_id)}/{PAIRED}",
                          json.dumps({"runs": runs, "table": compressions}).encode(), run_id)
    _switch(profiles, [run_id], run_id)  # the commit point of the whole run
    phase("switched")
    if compressions:
        _switch(compressions, runs, run_id)
        remove_stale(compressions, runs)
    remove_stale(profiles, [run_id])


def _previous_state(table: str, run_id: str, previous_profiles: str | None) -> list[str]:
    previous = committed_runs(table, previous_profiles)
    if previous is not None:
        return previous
    flat = _top_level(f"{table}/*.parquet")
    if not flat:
        return []
    moved = run_folder(table, f"legacy-{run_id}")
    if "://" not in moved:
        FileSystems.mkdirs(moved)
    FileSystems.rename(flat, [f"{moved}/{f.rsplit('/', 1)[-1]}" for f in flat])
    return [f"legacy-{run_id}"]


def _is_stale(name: str, keep: set[str], legacy: tuple[str, ...]) -> bool:
    if name in keep:
        return False
    return (bool(RUN_NAME.match(name)) or name.startswith("beam-temp-")
            or (name.startswith(f"{POINTER}.") and name.endswith(".tmp"))
            or any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), name) for p in legacy))


def remove_stale(table: str, runs: list[str], legacy: tuple[str, ...] = ("*.parquet",)) -> None:
    """Delete, in a table folder, what a run recognises as stale: run folders other than `runs`, legacy
    flat shards (`legacy` patterns), beam-temp-* folders and temporary pointers of killed runs. Nothing
    else (a summary, plots, a dead_letters/ subfolder, a user's files) is touched."""
    table = table.rstrip("/")
    keep = set(runs) | {POINTER}
    entries = _top_level(f"{table}/*") + _top_level(f"{table}/**")
    if "://" not in table and os.path.isdir(table):  # local matches list files only: add (empty) folders
        entries += [f"{table}/{name}" for name in os.listdir(table)]
    stale = [p for p in entries if _is_stale(p[len(table) + 1:].split("/", 1)[0], keep, legacy)]
    for path in sorted(set(stale), key=len):  # parents first: a deleted folder takes its files along
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except Exception:  # gone already (deleted with its folder) or removed by a concurrent reader's cleanup
            pass
