"""training.sample_run: the recipe's first stage on the bundled sample (tiny backbone here; the real one in the
README's command), ending in a checkpoint the jobs take."""
import json

from commer import ComMer
from training.sample_run import SAMPLE_DOCUMENTS, build_parser, main, sample_config


def test_the_sample_is_found_and_the_config_is_the_recipes_stage_1():
    assert [p.rsplit("/", 1)[-1] for p in SAMPLE_DOCUMENTS] == ["documents-0.jsonl", "documents-1.jsonl"]
    config = sample_config(build_parser().parse_args([]))
    assert config.task == "pretrain" and config.num_documents == 1 and config.data == SAMPLE_DOCUMENTS
    assert set(config.lora_target_modules) >= {"q_proj", "down_proj"} and config.lr_lora == 3e-3


def test_a_tiny_sample_run_trains_and_the_checkpoint_loads(tiny_backbone, commer_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--backbone", tiny_backbone, "--max_steps", "3", "--output_dir", str(out),
                 "--cache_dir", commer_cache, "--num_threads", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.splitlines()[0])
    assert summary["steps"] == 3 and summary["initial_val_ppl"] > 0 and summary["best_val_ppl"] > 0
    assert "held-out reconstruction perplexity" in printed and f"--checkpoint {out / 'final'}" in printed
    model = ComMer.from_pretrained(str(out / "final"), cache=commer_cache)
    assert model.config.trained is True and model.K == 8
    stage = model.config.training["stages"][-1]
    assert stage["data"] == SAMPLE_DOCUMENTS and stage["train_examples"] > 150  # the sample, one document each
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["step"] == 0 and any(r.get("val_ppl") for r in history[1:])
