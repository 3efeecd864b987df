"""Issue 27 item 2: the dtype compressions are computed in is recorded, and a refresh never mixes two.

The launcher resolves --dtype (auto: commer.precision's rule) before anything runs and hands the workers what it
resolved; the profiles and document-compressions tables record it (every file's metadata, each Delta commit) and
so does the run summary; a refresh in another dtype is refused in one line before anything runs; tables written
before the record read as float32. (Incremental = full per dtype: test_compress_users.py.)
"""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from deltalake import DeltaTable

from commer import ComMer
from delta_helpers import files as table_files
from pipelines import compress_users
from pipelines.compute_dtype import FULL_RUN
from pipelines.inference import resolve_on_worker
from pipelines.options import parse
from pipelines.recorded import recorded_dtype
from pipelines.runtime import CliError, run_cli
from schemas import read_metadata, read_parquet
from schemas.tables import commit_metadata
from test_compress_users import corpus, expected_profiles, job, profiles, write_jsonl
from pipelines.tables import convert_legacy, plan_output
from test_dataflow_dry_run import DATAFLOW
from test_rejected_runs import cli_error

ROWS = corpus(users=3, seed=2)
DTYPES = ("float32", "bfloat16")
# What --dtype auto is on a CPU, by the project's one rule (float32 today; issue 27 item 1 may make it bfloat16 on
# CPUs with native bfloat16), and the other dtype: the tests below hold whichever the rule picks.
CPU_AUTO = resolve_on_worker("auto", "cpu")[0]
OTHER = next(d for d in DTYPES if d != CPU_AUTO)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint, commer_cache):
    """The same documents compressed once per dtype, each run with its document compressions."""
    tmp = tmp_path_factory.mktemp("dtype")
    write_jsonl(tmp / "in.jsonl", ROWS)
    summaries = {dtype: job(tmp, tiny_checkpoint, commer_cache, tmp / "in.jsonl", dtype, "--dtype", dtype,
                            "--document_compressions_output", str(tmp / dtype / "document_compressions"))
                 for dtype in DTYPES}
    return tmp, summaries


@pytest.fixture
def no_gpu(monkeypatch):
    """A launcher without a GPU (as on Dataflow), whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_dtype_is_in_the_tables_the_commits_and_the_summary(runs):
    tmp, summaries = runs
    for dtype in DTYPES:
        assert summaries[dtype]["dtype"] == dtype
        assert json.loads((tmp / dtype / "run_summary.json").read_text())["dtype"] == dtype
        for table in ("profiles", "document_compressions"):
            path = tmp / dtype / table
            assert {read_metadata(pq.read_schema(f))["dtype"] for f in table_files(path, "--x", table)} == {dtype}
            commit = commit_metadata(DeltaTable(str(path)))
            assert commit["table"]["dtype"] == commit["summary"]["dtype"] == dtype
            assert read_metadata(read_parquet(str(path)))["dtype"] == dtype  # what a reader of ours sees


def test_the_workers_compute_in_the_recorded_dtype(runs, tiny_checkpoint, commer_cache):
    tmp, _ = runs
    reference = {dtype: expected_profiles(ComMer.from_pretrained(tiny_checkpoint, dtype=dtype, cache=commer_cache),
                                          ROWS) for dtype in DTYPES}

    def distance(got: str, want: str) -> float:
        made = profiles(tmp / got / "profiles")
        return max(float(np.max(np.abs(made[u].soft_prompt - reference[want][u]))) for u in reference[want])

    # Measured: each run 1e-7 from the reference of its own dtype, 1.3e-2 from the other's.
    assert distance("float32", "float32") <= 1e-5 < distance("float32", "bfloat16")
    assert distance("bfloat16", "bfloat16") < distance("bfloat16", "float32")


def test_auto_is_resolved_by_the_launcher_and_handed_to_the_workers(runs, tiny_checkpoint, commer_cache, no_gpu,
                                                                    monkeypatch, capsys):
    """A Dataflow launcher cannot see its workers' GPUs: `--device auto` resolves for the launcher (its CPU's
    auto, float32 today, without a GPU) and the workers compute in that; `--device cuda` makes it bfloat16 without
    a GPU here."""
    tmp, _ = runs
    handed = []

    handler = compress_users.ComMerModelHandler

    def recording(checkpoint, backbone, dtype, *args, **kwargs):  # a function: Beam pickles only what it returns
        handed.append(dtype)
        return handler(checkpoint, backbone, dtype, *args, **kwargs)

    monkeypatch.setattr(compress_users, "ComMerModelHandler", recording)
    argv = ["--input", str(tmp / "in.jsonl"), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    notes = []
    for device, dtype in (("auto", CPU_AUTO), ("cuda", "bfloat16")):
        flags, _ = parse(compress_users.parser, [*argv, "--output", str(tmp / "plan"), "--device", device])
        assert compress_users.make_plan(flags).dtype == dtype
        with pytest.raises(SystemExit) as exit_:
            run_cli(compress_users.main, [*argv, "--output", str(tmp / f"dry-{device}"), "--device", device,
                                          *DATAFLOW])
        assert exit_.value.code == 0
        notes.append([x for x in capsys.readouterr().err.splitlines() if x.startswith("note: --dtype auto")])
    assert handed == [CPU_AUTO, "bfloat16"]  # never "auto": the workers get what the launcher resolved
    assert len(notes[0]) == 1 and f"resolved to {CPU_AUTO} on this launcher (--device auto: cpu here)" in notes[0][0]
    assert "--device cuda" in notes[0][0] and "to bfloat16 on this launcher (--device cuda)" in notes[1][0]
    # A named dtype needs no note; a local run neither (its workers are this machine).
    with pytest.raises(SystemExit):
        run_cli(compress_users.main, [*argv, "--output", str(tmp / "dry-named"), "--dtype", "bfloat16", *DATAFLOW])
    assert "note: --dtype" not in capsys.readouterr().err and handed[-1] == "bfloat16"


def test_a_refresh_in_another_dtype_is_refused_before_anything_runs(runs, tiny_checkpoint, commer_cache, no_gpu,
                                                                   capfd):
    tmp, _ = runs
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory"]

    def refused(*flags) -> str:
        line = cli_error(compress_users, ["--input", str(tmp / "in.jsonl"), "--output", str(tmp / "refused"),
                                          *model, *flags], capfd)
        assert not (tmp / "refused").exists()  # nothing written, not even dead letters
        return line

    previous = str(tmp / "float32")
    assert refused("--previous_profiles", previous, "--dtype", "bfloat16") == (
        f"error: --dtype: this run computes in bfloat16, the --previous_profiles at {previous} in float32 "
        f"(compressions of different dtypes cannot be merged exactly); rerun with --dtype float32, or {FULL_RUN}")
    # auto on a launcher without a GPU is its CPU's auto: refused against the other dtype, naming the flag that fits.
    line = refused("--previous_profiles", str(tmp / OTHER))
    assert f"this run computes in {CPU_AUTO}" in line and f"rerun with --dtype {OTHER}" in line
    line = refused("--previous_profiles", previous, "--dtype", "float32", "--previous_document_compressions",
                   str(tmp / "bfloat16" / "document_compressions"))
    assert line.startswith("error: --dtype: this run computes in float32, the --previous_document_compressions at ")
    # (A refresh in the previous dtype runs: test_compress_users.py's refresh test, per dtype.)


def test_a_table_written_before_the_record_reads_as_float32(runs, tmp_path, tiny_checkpoint, commer_cache):
    tmp, _ = runs
    (source,) = table_files(tmp / "float32")  # the same profiles as a file of an earlier release: no dtype recorded
    table = pq.read_table(source)
    meta = {k: v for k, v in read_metadata(table).items() if k != "dtype"}
    old = str(tmp_path / "profiles.parquet")
    pq.write_table(table.replace_schema_metadata({b"commer": json.dumps(meta).encode()}), old)
    assert recorded_dtype([old], "--previous_profiles") == ("float32", old)
    with pytest.raises(CliError, match=r"^--dtype: this run computes in bfloat16, the --previous_profiles at .* in "
                                       r"float32 .*rerun with --dtype float32"):
        job(tmp_path, tiny_checkpoint, commer_cache, tmp / "in.jsonl", "x", "--dtype", "bfloat16",
            "--previous_profiles", old)
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp / "in.jsonl", "refreshed", "--dtype", "float32",
                  "--previous_profiles", old)
    assert summary["already_merged"] == len(ROWS) and summary["reconciled"]
    # Files of one table that disagree (an unrecorded one counts as float32) are refused, naming both.
    with pytest.raises(CliError, match="^--previous_profiles mixes dtypes ") as mixed:
        recorded_dtype([old, *table_files(tmp / "bfloat16")], "--previous_profiles")
    assert f"float32 ({old})" in str(mixed.value) and "bfloat16 (" in str(mixed.value)
    assert recorded_dtype([old, *table_files(tmp / "float32")], "--previous_profiles")[0] == "float32"


def test_a_folder_of_the_layout_before_delta_converts_with_its_own_dtype(runs, tmp_path):
    """A bfloat16 run writing into a folder of the layout before Delta: version 0 (the old, unrecorded files)
    records float32, not the run's dtype."""
    tmp, _ = runs
    (source,) = table_files(tmp / "float32")
    table = pq.read_table(source)
    meta = {k: v for k, v in read_metadata(table).items() if k != "dtype"}
    (tmp_path / "profiles" / "r1").mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({b"commer": json.dumps(meta).encode()}),
                   tmp_path / "profiles" / "r1" / "profiles-0.parquet")
    (tmp_path / "profiles" / "CURRENT").write_text("r1\n")
    (bf16,) = table_files(tmp / "bfloat16")
    output = plan_output("profiles", "--output", str(tmp_path / "profiles"), pq.read_schema(bf16), "run-2")
    assert output.legacy and output.metadata["dtype"] == "bfloat16"
    convert_legacy(output)
    assert recorded_dtype(table_files(tmp_path / "profiles"), "--output")[0] == "float32"
    assert commit_metadata(DeltaTable(str(tmp_path / "profiles")))["table"]["dtype"] == "float32"
