"""Issue 27's quality gate: two evaluation runs paired on the same examples (training.evaluation.compare_runs)."""
import numpy as np
import pytest

from training.evaluation.compare_runs import OTHER, OWN, RunMismatch, main, scored_rows
from training.evaluation.row_cache import RowCache


def write_run(folder, nll: dict, tokens, rouge: dict, examples):
    cache = RowCache(folder / "partial", run={"examples": examples}, checkpoint={"fingerprint": "x"},
                     backbone={"hash": "y"})
    for label in nll:
        cache.put({"label": label, "_nll": nll[label], "_tokens": tokens, "_rougeL": rouge[label],
                   "rougeL": float(rouge[label].mean())})


@pytest.fixture
def base():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 15, 400).astype(float)
    own = tokens * rng.uniform(3.5, 4.5, 400)           # ~4 nats per token
    other = own * 1.06
    rouge = {OWN: rng.uniform(0, 0.4, 400), OTHER: rng.uniform(0, 0.35, 400)}
    return {OWN: own, OTHER: other}, tokens, rouge, [f"e{i}" for i in range(400)]


def test_noise_passes_and_a_shift_fails(base, tmp_path, capsys):
    nll, tokens, rouge, ids = base
    write_run(tmp_path / "a", nll, tokens, rouge, ids)
    rng = np.random.default_rng(1)
    noisy = {k: v + rng.normal(0, 0.01, len(v)) for k, v in nll.items()}   # bf16-sized wobble
    write_run(tmp_path / "b", noisy, tokens, rouge, ids)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "**Gate: passes.**" in out and "unchanged" in out and (tmp_path / "cmp.json").exists()

    shifted = {k: v + 0.05 * tokens for k, v in nll.items()}   # +0.05 nats/token: ~5% perplexity on every row
    write_run(tmp_path / "c", shifted, tokens, rouge, ids)
    assert main([str(tmp_path / "a"), str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "**Gate: fails.**" in out and "| NO |" in out

    worse_control = {OWN: nll[OWN] + 0.05 * tokens, OTHER: nll[OTHER]}   # own moves, other not: the ratio changes
    write_run(tmp_path / "d", worse_control, tokens, rouge, ids)
    main([str(tmp_path / "a"), str(tmp_path / "d")])
    assert "CHANGED" in capsys.readouterr().out


def test_runs_on_other_examples_are_refused(base, tmp_path, capsys):
    nll, tokens, rouge, ids = base
    write_run(tmp_path / "a", nll, tokens, rouge, ids)
    write_run(tmp_path / "b", nll, tokens, rouge, ids[::-1])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "different examples" in capsys.readouterr().err
    with pytest.raises(RunMismatch, match="no scored rows"):
        scored_rows(tmp_path / "nothing")
