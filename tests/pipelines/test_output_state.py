"""pipelines.output_state without a pipeline: what a publish removes, and how a refresh pairs two tables."""
import json
from pathlib import Path

from pipelines.output_state import PAIRED, committed_runs, current_shards, publish, publish_profiles

OLD, NEW, KILLED = "20261101T000000-aaaaaaaa", "20261102T000000-bbbbbbbb", "20261103T000000-cccccccc"


def shard(folder: Path, name: str = "part-0.parquet") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"PAR1")


def test_publish_removes_only_what_it_recognises(tmp_path):
    """--output and --dead_letter_output are user folders: a publish there must not delete what is not its."""
    table = tmp_path / "out"
    for run in (OLD, NEW, KILLED, f"legacy-{OLD}"):
        shard(table / run)
    shard(table / "beam-temp-predictions-1234", "partial.parquet")
    (table / f"CURRENT.{KILLED}.tmp").write_text(OLD)
    (table / "predictions-19990101T000000-deadbeef-00000-of-00001.parquet").write_bytes(b"legacy flat shard")
    keep = {"notes.txt": "mine", "run_summary.json": "{}", "metrics.json": "{}", "2026-report": "x"}
    for name, text in keep.items():
        (table / name).write_text(text)
    shard(table / "dead_letters" / OLD, "dead_letters-x.jsonl")  # another table inside: left alone
    publish(str(table), NEW, legacy=("predictions-*.parquet",))
    assert sorted(p.name for p in table.iterdir()) == sorted(["CURRENT", NEW, "dead_letters", *keep])
    assert (table / "CURRENT").read_text() == f"{NEW}\n"
    assert (table / "dead_letters" / OLD / "dead_letters-x.jsonl").exists()
    assert current_shards(str(table)) == [str(table / NEW / "part-0.parquet")]


def test_a_refresh_reads_the_compressions_the_committed_profiles_pair_with(tmp_path):
    profiles, comps = tmp_path / "out" / "profiles", tmp_path / "out" / "dc"
    for run in (OLD, NEW):
        shard(profiles / run)
        shard(comps / run)
    (profiles / "CURRENT").write_text(f"{OLD}\n")
    (comps / "CURRENT").write_text(f"{OLD}\n")
    (profiles / OLD / PAIRED).write_text(json.dumps({"runs": [OLD]}))
    # Killed between the two switches: the profiles name NEW (paired with NEW), the compressions' CURRENT OLD.
    (profiles / "CURRENT").write_text(f"{NEW}\n")
    (profiles / NEW / PAIRED).write_text(json.dumps({"runs": [NEW]}))
    assert committed_runs(str(comps)) == [OLD]  # a plain reader: the whole old state
    for given in (tmp_path / "out", profiles):  # --previous_profiles: the job's --output or its profiles/
        assert committed_runs(str(comps), paired_with=str(given)) == [NEW]
    # Compressions that do not hold the paired runs (another table, or written before PAIRED): their CURRENT.
    shard(tmp_path / "other" / KILLED)
    (tmp_path / "other" / "CURRENT").write_text(f"{KILLED}\n")
    assert committed_runs(str(tmp_path / "other"), paired_with=str(profiles)) == [KILLED]


def test_publish_profiles_commits_the_pair_and_keeps_previous_compressions_when_asked(tmp_path):
    profiles, comps = tmp_path / "out" / "profiles", tmp_path / "dc"
    shard(comps / OLD)
    (comps / "CURRENT").write_text(f"{OLD}\n")
    shard(profiles / NEW)
    shard(comps / NEW)
    publish_profiles(str(profiles), NEW, str(comps), keep_previous_compressions=True)
    assert (profiles / "CURRENT").read_text() == f"{NEW}\n"
    assert json.loads((profiles / NEW / PAIRED).read_text())["runs"] == [OLD, NEW]
    assert (comps / "CURRENT").read_text() == f"{OLD}\n{NEW}\n"
    assert committed_runs(str(comps), paired_with=str(tmp_path / "out")) == [OLD, NEW]
