"""`python -m commer.init`: an untrained checkpoint for any backbone, errors in one line."""
from commer import ComMer
from commer.init import main


def test_init_writes_an_untrained_checkpoint_for_a_backbone(tiny_backbone, commer_cache, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["--backbone", tiny_backbone, "--num_compression_tokens", "3", "--lora_r", "4",
                 "--output", str(out), "--cache_dir", commer_cache]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    model = ComMer.from_pretrained(str(out), cache=commer_cache)
    assert model.K == 3 and model.config.trained is False and model.config.lora.r == 4
    assert model.config.backbone == tiny_backbone

    # A second run does not silently replace it.
    assert main(["--backbone", tiny_backbone, "--output", str(out), "--cache_dir", commer_cache]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_init_errors_are_one_line(tmp_path, capsys):
    assert main(["--backbone", str(tmp_path / "nowhere"), "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --backbone") and len(err.splitlines()) == 1
    assert main(["--backbone", "default", "--num_compression_tokens", "0", "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "num_compression_tokens" in err and len(err.splitlines()) == 1
