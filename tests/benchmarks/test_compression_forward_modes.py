"""benchmarks.compression_forward runs its token-budget and packed modes end to end (not timed)."""
import json
from pathlib import Path

import pytest

from benchmarks.common import DEFAULT_NEWS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def news(tmp_path_factory) -> str:
    if Path(DEFAULT_NEWS).exists():
        return DEFAULT_NEWS
    path = tmp_path_factory.mktemp("news") / "news.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"link": f"https://example.org/{i}", "headline": f"Headline {i}",
                                "short_description": f"Article {i} " + "in some detail " * (1 + i % 5),
                                "authors": f"Author {i % 4}", "category": "TEST", "date": "2022-01-01"}) + "\n")
    return str(path)


def test_compression_forward_batching_modes(news):
    from benchmarks import compression_forward
    table = compression_forward.main(["--data", news, "--documents", "10", "--batch_size", "4",
                                      "--max_batch_tokens", "150", "--packed_tokens", "150"])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    assert [r[1] for r in rows] == ["raw forward, documents", "raw forward, documents + K", "ComMer.compress",
                                    "token budget 150, padded", "token budget 150, packed"]
    assert rows[-1][5] == "1"                                  # packed: no padding
    assert all(float(r[-1]) < 1e-4 for r in rows[3:])          # same compressions as count batches
