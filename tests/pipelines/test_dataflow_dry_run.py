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


def test_an_offline_dry_run_reads_no_remote_table(tiny_checkpoint, commer_cache, capsys, monkeypatch):
    """Issue 26 on the Delta layout: with every input and output table remote, a dry run plans without opening
    one (no Delta log, no listing, no footer) -- any remote read here fails the test."""
    import fsspec
    from apache_beam.io.filesystems import FileSystems

    remote = []  # recorded as well as refused: some readers take any error for "no table there"

    def local_only(read):
        def guarded(*args, **kwargs):
            named = [a for a in args if isinstance(a, str)] + [p for a in args if isinstance(a, list) for p in a]
            if any(str(p).startswith("gs://") for p in named):
                remote.extend(named)
                raise OSError(f"offline: {named}")
            return read(*args, **kwargs)
        return guarded

    monkeypatch.setattr(fsspec, "get_fs_token_paths", local_only(fsspec.get_fs_token_paths))
    for name in ("match", "open", "exists"):
        monkeypatch.setattr(FileSystems, name, staticmethod(local_only(getattr(FileSystems, name))))
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    out = dry_run(compress_users, ["--input", "gs://demo/docs/*.jsonl", "--output", "gs://demo/out",
                                   "--previous_profiles", "gs://demo/prev@3", "--deletions", "gs://demo/del.jsonl",
                                   "--previous_document_compressions", "gs://demo/comp",
                                   "--document_compressions_output", "gs://demo/comp2", *model], capsys)
    assert "job graph built for Dataflow, not submitted" in out
    out = dry_run(generate, ["--queries", "gs://demo/q.jsonl", "--profiles", "gs://demo/out", "--output",
                             "gs://demo/gen", *model], capsys)
    assert "job graph built for Dataflow, not submitted" in out
    out = dry_run(evaluate, ["--predictions", "gs://demo/gen", "--references", "gs://demo/refs.json",
                             "--output", "gs://demo/ev"], capsys)
    assert "job graph built for Dataflow, not submitted" in out
    assert remote == []
