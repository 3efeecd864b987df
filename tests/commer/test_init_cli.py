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


def test_init_help_names_the_module_documents_every_flag_once(capsys):
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "commer.init", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m commer.init ")
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers", "commer.model"} & imported  # --help before the heavy imports
    from commer.init import build_parser
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert (action.help or "").lower().count("default") <= 1
    help_text = " ".join(parser.format_help().split())
    assert help_text.count("(default: None)") == 0 and "--cache_dir CACHE_DIR Backbone cache (default $COMMER" in help_text


def test_init_unknown_flag_is_one_line_naming_the_closest(capsys, tmp_path):
    import pytest
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "default", "--output", str(tmp_path / "c"), "--num_compression_token", "4"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --num_compression_token is not a flag of python -m commer.init: did you mean "
                          "--num_compression_tokens?")
