"""training.recipe: both stages sized to a wall-clock budget, resumable, with its record."""
import json
from pathlib import Path

import pytest

from training.config import ConfigError
from training.recipe import (RecipeConfig, baseline_config, compression_tokens, main, parse_duration, run,
                             stage_configs)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "training"


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("8m") == 480 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("600") == 600
    with pytest.raises(ConfigError, match="--time_budget"):
        parse_duration("eight minutes")


def test_recipe_runs_both_stages_within_the_plan_and_resumes(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMER_CACHE_DIR", str(tmp_path / "cache"))
    recipe = RecipeConfig(
        time_budget="4s", output_dir=str(tmp_path / "run"), backbone=tiny_backbone,
        pretrain_data=[str(FIXTURES / "wikitext_sample.txt")], news_data=[str(FIXTURES / "news.jsonl")],
        num_compression_tokens=2, lora_r=4, lora_alpha=4, lora_target_modules=["q_proj", "v_proj"],
        batch_size=4, micro_batch_size=4, val_examples=4, evaluations_per_stage=2, news_documents=2,
        num_threads=1, probe_examples=3, eval_examples=0,
    )
    record = run(recipe)
    out = Path(recipe.output_dir)
    plan = json.loads((out / "recipe_plan.json").read_text())
    assert plan["stage1_steps"] >= 1 and plan["stage2_steps"] >= 1
    assert all(t > 0 for t in plan["seconds_per_step"])
    assert all(t > 0 for t in plan["seconds_per_validation"])
    # The news documents of training authors joined the auto-encoding corpus.
    assert (out / "news_train_documents.jsonl").exists()
    config = json.loads((out / "final" / "commer_config.json").read_text())
    assert config["trained"] is True
    assert [s["task"] for s in config["training"]["stages"]] == ["pretrain", "news"]
    assert config["training"]["stages"][0]["steps"] == plan["stage1_steps"]
    assert config["training"]["recipe"]["plan"]["hardware"]
    # Stage 2 mixed stage 1's auto-encoding corpus into the news examples (default 0.5 per example).
    news_stage = config["training"]["stages"][1]["config"]
    assert news_stage["autoencoding_ratio"] == 0.5
    assert news_stage["autoencoding_data"] == config["training"]["stages"][0]["data"]
    # The baseline: prompt tuning without documents, as many news steps as stage 2.
    baseline = json.loads((out / "baseline" / "final" / "prompt_tuning.json").read_text())
    assert baseline["method"] == "prompt_tuning"
    assert baseline["training"]["stages"][-1]["num_documents"] == 0
    assert baseline["training"]["stages"][-1]["planned_steps"] == plan["stage2_steps"]
    assert len(plan["seconds_per_step"]) == 3
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"stage1", "stage2", "baseline"}
    assert (out / "validation_perplexity.png").stat().st_size > 0
    assert record["plan"] == plan
    probe = record["reconstruction_probe"]
    assert probe["perplexity"] > 0 and probe["reference_perplexity"] > 0
    assert record["reconstruction_probe_stage1"]["examples"] == probe["examples"]

    # Rerunning the same command keeps the plan and finds both stages done.
    again = run(recipe)
    assert again["plan"] == plan


def test_recipe_continues_from_an_earlier_stage1(tiny_backbone, tmp_path, monkeypatch):
    """--init_checkpoint: stage 1 starts from an earlier run's weights, so CPU hours add up."""
    monkeypatch.setenv("COMMER_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(
        time_budget="3s", backbone=tiny_backbone, pretrain_data=[str(FIXTURES / "wikitext_sample.txt")],
        news_data=[str(FIXTURES / "news.jsonl")], num_compression_tokens=2, lora_r=4, lora_alpha=4,
        lora_target_modules=["q_proj", "v_proj"], batch_size=4, micro_batch_size=4, val_examples=4,
        evaluations_per_stage=1, news_documents=2, num_threads=1, probe_examples=0, eval_examples=0,
        baseline=False, stage2_autoencoding=0,
    )
    first = tmp_path / "first"
    run(RecipeConfig(output_dir=str(first), **common))
    earlier = json.loads((first / "stage1" / "summary.json").read_text())
    second = tmp_path / "second"
    run(RecipeConfig(output_dir=str(second), init_checkpoint=str(first / "stage1" / "final"), **common))
    start = json.loads((second / "stage1" / "metrics.jsonl").read_text().splitlines()[0])
    # Same validation examples: the second run starts exactly where the first one's best weights were.
    assert start["step"] == 0
    assert start["val_ppl"] == pytest.approx(earlier["best_val_ppl"], rel=1e-5)
    # A larger --num_compression_tokens grows the checkpoint's K (2 → 4) in stage 1, and the baseline
    # gets the same prompt budget; a smaller one keeps the checkpoint's K.
    grown = RecipeConfig(output_dir=str(tmp_path / "third"), init_checkpoint=str(first / "stage1" / "final"),
                         **{**common, "num_compression_tokens": 4})
    (tmp_path / "third").mkdir()
    stage1, stage2 = stage_configs(grown, tmp_path / "third", (1, 1))
    assert (stage1.grow_compression_tokens, stage2.num_compression_tokens) == (4, 4)
    assert baseline_config(grown, tmp_path / "third", 1).num_compression_tokens == 4
    assert compression_tokens(grown.model_copy(update={"num_compression_tokens": 1})) == (2, None)


def test_recipe_cli_errors_name_the_flag(capsys):
    assert main(["--time_budget", "soon", "--pretrain_data", "x", "--news_data", "y"]) == 2
    assert "--time_budget" in capsys.readouterr().err
    assert main(["--time_budget", "8m"]) == 2
    assert "--pretrain_data" in capsys.readouterr().err
