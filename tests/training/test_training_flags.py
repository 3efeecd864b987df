"""training.flags: the one pydantic → argparse generator behind training.train's and training.recipe's flags."""
import pytest

from training.config import TrainConfig, build_parser as train_parser
from training.flags import given_values
from training.recipe import RecipeConfig, build_parser as recipe_parser


def test_each_kind_of_field_reads_its_flag():
    args = recipe_parser().parse_args(["--time_budget", "600", "--stage_shares", "0.6", "0.3", "--baseline", "off",
                                       "--num_compression_tokens", "16", "--init_checkpoint", "7", "--pretrain_data",
                                       "a.txt", "b.txt"])
    given = given_values(args, RecipeConfig)
    # Left-out flags are absent, so the model's defaults stand.
    assert set(given) == {"time_budget", "stage_shares", "baseline", "num_compression_tokens", "init_checkpoint",
                          "pretrain_data"}
    recipe = RecipeConfig.model_validate(given)
    assert recipe.time_budget == "600" and recipe.init_checkpoint == "7"   # str fields keep the text
    assert recipe.stage_shares == (0.6, 0.3) and recipe.pretrain_data == ["a.txt", "b.txt"]
    assert recipe.baseline is False and recipe.num_compression_tokens == 16
    assert recipe.lr_lora == RecipeConfig().lr_lora


def test_both_entry_points_share_it(capsys):
    config = TrainConfig.model_validate(given_values(train_parser().parse_args(
        ["--lora_target_modules", "q_proj", "--resume", "false", "--max_steps", "5", "--lr_lora", "1e-3"]), TrainConfig))
    assert (config.lora_target_modules, config.resume, config.max_steps, config.lr_lora) == (["q_proj"], False, 5, 1e-3)
    for parser, flag in ((train_parser(), "--resume"), (recipe_parser(), "--baseline")):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, "maybe"])
        assert f"{flag}: expected true/false, got 'maybe'" in capsys.readouterr().err
