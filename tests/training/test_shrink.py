"""training.shrink: truncated-SVD LoRA rank reduction, as math and on a real (tiny) checkpoint."""
import pytest
import torch

from commer import ComMer
from training import shrink


def test_truncate_is_the_best_low_rank_approximation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 20, generator=g), torch.randn(12, 8, generator=g)
    delta = 2.0 * b @ a
    # Full rank keeps the update exactly.
    a8, b8, energy = shrink.truncate(a, b, 2.0, 8)
    assert torch.allclose(b8 @ a8, delta, atol=1e-4) and energy == pytest.approx(1.0)
    # Rank 3 is the Eckart–Young optimum: the top 3 singular triplets of the full update.
    a3, b3, energy = shrink.truncate(a, b, 2.0, 3)
    u, s, vh = torch.linalg.svd(delta.double())
    best = (u[:, :3] * s[:3]) @ vh[:3]
    assert a3.shape == (3, 20) and b3.shape == (12, 3)
    assert torch.allclose((b3 @ a3).double(), best, atol=1e-4)
    assert energy == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()), rel=1e-6)


def test_shrunk_checkpoint_keeps_a_low_rank_adapter_exactly(tiny_model, commer_cache, tmp_path, capsys):
    # Give every rank-8 adapter an update of true rank 2: shrinking to 2 must change nothing.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in shrink.adapters(tiny_model).values():
            b = layer.lora_B["default"].weight
            b.zero_()
            b[:, :2] = 0.5 * torch.randn(b.shape[0], 2, generator=g)
    tiny_model.config = tiny_model.config.model_copy(update={"trained": True})
    tiny_model.attach_task_prompt(0.1 * torch.randn(2, tiny_model.hidden_size, generator=g))
    big = tmp_path / "big"
    tiny_model.save_pretrained(str(big))
    texts = ["the cat sat on the mat", "a quick brown fox jumps"]
    want = tiny_model.compress(texts)

    assert shrink.main(["--checkpoint", str(big), "--rank", "2", "--output", str(tmp_path / "small"),
                        "--weights_dtype", "float32", "--cache_dir", commer_cache]) == 0
    assert "rank 8 -> 2" in capsys.readouterr().out
    small = ComMer.from_pretrained(str(tmp_path / "small"), cache=commer_cache)
    assert small.config.lora.r == 2 and small.config.training["shrunk"]["energy_kept_min"] == pytest.approx(1.0)
    assert torch.allclose(small.compress(texts), want, atol=1e-4)
    torch.testing.assert_close(small.task_prompt.data, tiny_model.task_prompt.data)  # the checkpoint's own, kept
    # Rank 1 loses part of each update: the compressions move.
    assert shrink.main(["--checkpoint", str(big), "--rank", "1", "--output", str(tmp_path / "r1"),
                        "--cache_dir", commer_cache]) == 0
    r1 = ComMer.from_pretrained(str(tmp_path / "r1"), cache=commer_cache)
    assert not torch.allclose(r1.compress(texts), want, atol=1e-3)
    # A rank that does not shrink is a one-line error.
    assert shrink.main(["--checkpoint", str(big), "--rank", "8", "--output", str(tmp_path / "x"),
                        "--cache_dir", commer_cache]) == 2
    assert "--rank 8 is not below the checkpoint's LoRA rank 8" in capsys.readouterr().err
