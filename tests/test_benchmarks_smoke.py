"""Each benchmark runs end to end at a tiny size, so the scripts keep working (not timed)."""
import json
from pathlib import Path

import pytest

from benchmarks.common import DEFAULT_NEWS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def news(tmp_path_factory) -> str:
    """The shared HuffPost file when it is beside the checkout, else a small file in its format,
    so the smoke runs never depend on ../shared being there."""
    if Path(DEFAULT_NEWS).exists():
        return DEFAULT_NEWS
    path = tmp_path_factory.mktemp("news") / "news.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(80):
            f.write(json.dumps({"link": f"https://example.org/{i}", "headline": f"Headline number {i} about topic {i % 7}",
                                "short_description": f"Article {i} describes event {i % 11} " + "in some detail " * (1 + i % 5),
                                "authors": f"Author {i % 8}", "category": "TEST", "date": "2022-01-01"}) + "\n")
    return str(path)


def _rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_generation_cost_smoke(news):
    from benchmarks import generation_cost
    rows = _rows(generation_cost.main(["--data", news, "--queries", "2", "--docs", "1,2", "--new_tokens", "2", "--repeats", "1"]))
    assert [r[0] for r in rows] == ["1", "2"]
    assert float(rows[1][2]) > float(rows[0][2])  # more documents, longer in-prompt baseline


def test_compression_forward_smoke(news):
    from benchmarks import compression_forward
    rows = _rows(compression_forward.main(["--data", news, "--documents", "12", "--batch_size", "4"]))
    assert [r[1] for r in rows] == ["raw forward, documents", "raw forward, documents + K", "ComMer.compress"]


def test_pipeline_throughput_smoke(news):
    from benchmarks import pipeline_throughput
    rows = _rows(pipeline_throughput.main(["--data", news, "--documents", "24", "--device", "cpu",
                                           "--modes", "count:4,tokens:300,packed:200"]))
    assert [r[:2] for r in rows[::2]] == [["raw forward, documents + K (reference)", "count 4"],
                                          ["compress_users (FnApiRunner, minus start-up)", "count 4"],
                                          ["compress_users (FnApiRunner, minus start-up)", "tokens 300"],
                                          ["compress_users (FnApiRunner, minus start-up)", "packed 200"]]
    assert all(0 < float(r[6]) <= 1 for r in rows) and float(rows[-1][6]) == 1  # packed: no padding
    for loop, job in zip(rows[1::2], rows[2::2]):  # 24 documents: one key, so the job forms the loop's batches
        assert loop[1] == job[1] and loop[7:9] == job[7:9] and int(job[7]) > 1


def test_pipeline_throughput_marginal_row(news):
    from benchmarks import pipeline_throughput
    rows = _rows(pipeline_throughput.main(["--data", news, "--documents", "24", "--device", "cpu",
                                           "--modes", "tokens:300", "--marginal"]))
    assert [r[0] for r in rows[:3]] == ["raw forward, documents + K (reference)", "bare compress loop",
                                        "compress_users (FnApiRunner, minus start-up)"]
    if len(rows) == 4:  # left out only when the 24-document job did not take longer than the 12-document one
        assert rows[3][:2] == ["compress_users, marginal (12 → 24 documents)", "tokens 300"]
        assert float(rows[3][2]) > 0 and float(rows[3][5]) > 0


def test_pipeline_throughput_loop_only_runs_no_job(news, tmp_path):
    from benchmarks import pipeline_throughput
    out = tmp_path / "table.md"
    rows = _rows(pipeline_throughput.main(["--data", news, "--documents", "12", "--device", "cpu", "--loop_only",
                                           "--modes", "count:4,packed:200", "--output", str(out)]))
    assert [r[:2] for r in rows] == [["raw forward, documents + K (reference)", "count 4"],
                                     ["bare compress loop", "count 4"], ["bare compress loop", "packed 200"]]
    assert "Beam job rows not run (--loop_only)" in out.read_text()


def test_refresh_cost_smoke(news):
    from benchmarks import refresh_cost
    rows = _rows(refresh_cost.main(["--data", news, "--documents", "40", "--fractions", "0.05"]))
    assert rows[0][1] == rows[0][2] == "2"  # every 20th of 40 documents is new, and exactly those are compressed


def test_memory_at_scale_smoke():
    from benchmarks import memory_at_scale
    rows = _rows(memory_at_scale.main(["--users", "20,40"]))
    assert [r[0] for r in rows] == ["20", "40"] and all(float(r[1]) > 0 for r in rows)


def test_commit_cost_smoke(tmp_path):
    from benchmarks import commit_cost
    rows = _rows(commit_cost.main(["--files", "3", "--rows_per_file", "1", "--output", str(tmp_path / "c")]))
    assert [r[0] for r in rows] == ["0", "1"] and all(r[1] == "3" for r in rows)
