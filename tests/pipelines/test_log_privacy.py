"""Issue 24 item 4 / DESIGN.md invariant 7: no record text in any log line, at any level. Every job runs at
--log_level DEBUG (Beam's worker logs each element it processes at DEBUG) with a secret in documents, instructions
and references, in good records and in rejected ones; the secret must appear in no output but the data."""
import json

import pytest

from pipelines import evaluate, generate, logs
from pipelines.runtime import run_cli

SECRET = "Zq7SECRETxK"


def run_at_debug(job, argv) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli(job.main, [*argv, "--log_level", "DEBUG", "--direct_running_mode=in_memory"])
    assert exit_.value.code == 0


def test_no_record_text_in_any_log_at_debug(tmp_path, tiny_checkpoint, commer_cache, capfd):
    docs = [{"user_id": f"u{i % 2}", "doc_id": f"d{i}", "text": f"{SECRET} document {i}"} for i in range(4)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs)
                                         + f'{{"user_id": "u0", "doc_id": "bad", "text": "{SECRET}\n')
    queries = [{"user_id": f"u{i % 2}", "query_id": f"q{i}", "instruction": f"{SECRET} asks {i}",
                "reference": f"{SECRET} answers"} for i in range(3)]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps({"query_id": q["query_id"], "reference": f"{SECRET} ref"})
                                                 + "\n" for q in queries))
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    try:
        # In-prompt mode carries documents, instructions and references through Beam's elements at once.
        run_at_debug(generate, ["--mode", "in_prompt", "--documents", str(tmp_path / "docs.jsonl"), "--queries",
                                str(tmp_path / "queries.jsonl"), "--output", str(tmp_path / "gen"),
                                "--max_new_tokens", "2", *model])
        run_at_debug(evaluate, ["--predictions", str(tmp_path / "gen"), "--references", str(tmp_path / "refs.jsonl"),
                                "--output", str(tmp_path / "ev"), "--no_plots"])
    finally:
        logs.setup(logs.DEFAULT_LEVEL)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "DEBUG apache_beam" in text  # DEBUG was on, for Beam too
    assert SECRET not in text
