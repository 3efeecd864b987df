"""Issue 15: every job's graph builds for Dataflow, offline (--dry_run: built, not submitted), so a change
that cannot run on Dataflow fails here."""
import json

import pytest

from pipelines import compress_users, evaluate, generate
from pipelines.runtime import run_cli

DATAFLOW = ["--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--project=demo", "--region=us-central1",
            "--temp_location=gs://demo/tmp"]


@pytest.fixture(scope="module")
def profiles(tmp_path_factory, tiny_checkpoint, commer_cache):
    folder = tmp_path_factory.mktemp("dry")
    (folder / "docs.jsonl").write_text("".join(json.dumps({"user_id": f"u{i % 2}", "doc_id": f"d{i}",
                                                           "text": f"text number {i}"}) + "\n" for i in range(4)))
    compress_users.run(["--input", str(folder / "docs.jsonl"), "--output", str(folder / "out"), "--checkpoint",
                        tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory"])
    return folder


def dry_run(job, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(job.main, argv + DATAFLOW)
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    return out


def test_all_three_jobs_build_for_dataflow_without_submitting(profiles, tiny_checkpoint, commer_cache, capsys):
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    out = dry_run(compress_users, ["--input", str(profiles / "docs.jsonl"), "--output", str(profiles / "o1"),
                                   "--previous_profiles", str(profiles / "out"), *model], capsys)
    assert "job graph built for Dataflow, not submitted" in out
    (profiles / "queries.jsonl").write_text(json.dumps({"user_id": "u0", "query_id": "q", "instruction": "hi",
                                                        "reference": "hello"}) + "\n")
    out = dry_run(generate, ["--queries", str(profiles / "queries.jsonl"), "--profiles", str(profiles / "out"),
                             "--output", str(profiles / "o2"), *model], capsys)
    assert "job graph built for Dataflow, not submitted" in out
    (profiles / "predictions.jsonl").write_text(json.dumps({
        "user_id": "u0", "query_id": "q", "prediction": "hello", "personalized": True, "reference": "hello",
        "model_fingerprint": "x"}) + "\n")
    out = dry_run(evaluate, ["--predictions", str(profiles / "predictions.jsonl"), "--output", str(profiles / "o3")],
                  capsys)
    assert "job graph built for Dataflow, not submitted" in out
    assert not (profiles / "o1").exists() or not list((profiles / "o1").rglob("*.parquet"))
