"""Issue 15: the same results on separate worker processes. Beam's
--direct_running_mode=multi_processing --direct_num_workers=2 (no --runner: the local FnApiRunner, no Prism
download) runs compress_users, a refresh and generate in two SDK worker processes; each must equal the
in-process run."""
import json

import numpy as np

from pipelines import compress_users, generate
from schemas import Profile, from_table, read_parquet

MODES = {"in_process": ["--direct_running_mode=in_memory"],
         "workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}
ROWS = [{"user_id": f"u{u}", "doc_id": f"d{d}", "text": f"user {u} on subject {d} " * (1 + d % 3)}
        for u in range(4) for d in range(3)]


def _profiles(folder) -> dict:
    return {p.user_id: p for p in from_table(read_parquet(str(folder)), Profile)}


def test_jobs_on_two_worker_processes_equal_the_in_process_run(tmp_path, tiny_checkpoint, commer_cache):
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:7]))
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(
        {"user_id": f"u{u}", "query_id": f"q{u}", "instruction": "Write a headline.", "reference": "A headline"})
        + "\n" for u in range(5)))
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    results = {}
    for mode, runner in MODES.items():
        out = tmp_path / mode
        compress_users.run(["--input", str(tmp_path / "old.jsonl"), "--output", str(out), *model, *runner])
        summary = compress_users.run(["--input", str(tmp_path / "new.jsonl"), "--output", str(out),
                                      "--previous_profiles", str(out), *model, *runner])
        assert summary["reconciled"] and summary["already_merged"] == 7
        assert generate.main([f"--profiles={out}", f"--queries={tmp_path / 'queries.jsonl'}",
                              f"--output={tmp_path / (mode + '-predictions')}", "--max_new_tokens=4", *model, *runner]) == 0
        predictions = {r["query_id"]: r for r in read_parquet(str(tmp_path / (mode + "-predictions"))).to_pylist()}
        results[mode] = (_profiles(out), predictions)
    (a, pa_), (b, pb) = results["in_process"], results["workers"]
    assert sorted(a) == sorted(b) == [f"u{u}" for u in range(4)]
    for user in a:
        assert a[user].doc_ids == b[user].doc_ids
        np.testing.assert_allclose(a[user].soft_prompt_sum, b[user].soft_prompt_sum, rtol=1e-6, atol=1e-6)
    assert {q: (r["prediction"], r["personalized"]) for q, r in pa_.items()} == \
        {q: (r["prediction"], r["personalized"]) for q, r in pb.items()}
