"""The training loop on the tiny backbone: config round trip, overfitting, resume equivalence,
prompt tuning, evaluation, and clear CLI errors."""
import json
from pathlib import Path

import pytest
import torch

from training import train as train_mod
from training.config import ConfigError, TrainConfig
from training.evaluate_task import evaluate, rouge_scores
from training.tasks import Example

F = Path(__file__).parent / "fixtures" / "training"


def word_examples(n=8):
    words = ["apple", "river", "mountain", "violin", "orange", "silver", "garden", "window", "planet", "candle"]
    return [Example(documents=[f"Text: {words[i % 10]} {words[(i + 3) % 10]} Title: {words[(i + 1) % 10]}",
                               f"Text: {words[(i + 5) % 10]} Title: {words[(i + 2) % 10]}"],
                    instruction=f"Generate a headline for the following article: {words[(i + 7) % 10]}",
                    answer=f"{words[i % 10]} {words[(i + 1) % 10]}", user_id=f"u{i}", example_id=str(i))
            for i in range(n)]


def training_config(tiny_backbone, commer_cache, tmp_path, **kw):
    base = dict(task="news", data=["unused.jsonl"], backbone=tiny_backbone, cache_dir=commer_cache,
                num_compression_tokens=4, max_document_tokens=64, lora_r=8, lora_alpha=16, lora_dropout=0.1,
                batch_size=4, micro_batch_size=2, max_steps=6, eval_every=3, save_every=100, num_threads=1,
                output_dir=str(tmp_path / "run"), lr_lora=1e-2, lr_embeddings=5e-2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def fixed_examples(monkeypatch):
    examples = word_examples()
    monkeypatch.setattr(train_mod, "load_examples", lambda config, split, limit=None: list(examples))
    return examples


def test_config_round_trip(tmp_path):
    config = TrainConfig(task="lamp7", data=["q.json"], data_outputs="o.json", lora_r=16, max_steps=10)
    for name in ("c.yaml", "c.json"):
        config.to_file(str(tmp_path / name))
        assert TrainConfig.from_file(str(tmp_path / name)) == config
    loaded = TrainConfig.from_args(["--config", str(tmp_path / "c.yaml"), "--lora_r", "4", "--set", "lr_lora=0.001",
                                    "--set", "lora_target_modules=[q_proj]", "--data", "a.json", "b.json",
                                    "--resume", "false"])
    assert (loaded.lora_r, loaded.lr_lora, loaded.lora_target_modules) == (4, 0.001, ["q_proj"])
    assert loaded.data == ["a.json", "b.json"] and loaded.resume is False and loaded.task == "lamp7"
    with pytest.raises(ConfigError, match="no such config field"):
        TrainConfig.from_args(["--set", "nope=1"])
    with pytest.raises(ConfigError, match="lora_r"):
        TrainConfig.from_args(["--set", "lora_r=0"])
    (tmp_path / "bad.yaml").write_text("lora_rank: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown config field"):
        TrainConfig.from_file(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        TrainConfig.from_file(str(tmp_path / "missing.yaml"))
    # No documents: only the prompt-tuning baseline on news (ComMer would have nothing to compress).
    assert TrainConfig(method="prompt_tuning", task="news", num_documents=0).num_documents == 0
    with pytest.raises(ConfigError, match="num_documents=0 is only for method=prompt_tuning with task=news"):
        TrainConfig.from_args(["--num_documents", "0"])


def test_loss_decreases_on_tiny_overfit_set(tiny_backbone, commer_cache, tmp_path, fixed_examples):
    config = training_config(tiny_backbone, commer_cache, tmp_path, max_steps=30, eval_every=30, lora_dropout=0.0,
                     lr_lora=3e-2, lr_embeddings=0.3)
    summary = train_mod.train(config, progress=False)
    history = summary["val_history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 30
    # The tiny random backbone is close to uniform over its 400 tokens (perplexity ~400) and
    # barely reacts to its input, so a 5% drop is a clear signal that training works.
    assert history[-1]["val_ppl"] < 0.95 * history[0]["val_ppl"]
    from commer import ComMer
    from commer.checkpoint import read_config
    final = read_config(summary["final"])
    assert final.trained and final.training["stages"][-1]["steps"] == 30
    assert ComMer.from_pretrained(summary["final"], cache=commer_cache).K == 4


def _fingerprint(folder):
    return json.loads((Path(folder) / "commer_config.json").read_text())["fingerprint"]


def test_resume_equivalence(tiny_backbone, commer_cache, tmp_path, fixed_examples):
    """Killed after step 3 and resumed = uninterrupted, bit for bit (one thread: CPU reductions
    with several threads may differ in the last bits from run to run)."""
    whole = training_config(tiny_backbone, commer_cache, tmp_path / "a")
    train_mod.train(whole, progress=False)
    parts = training_config(tiny_backbone, commer_cache, tmp_path / "b", stop_after_steps=3)
    assert train_mod.train(parts, progress=False)["stopped"]
    state = json.loads((tmp_path / "b" / "run" / "last" / train_mod.STATE_JSON).read_text())
    assert state["step"] == 3
    train_mod.train(parts.model_copy(update={"stop_after_steps": None}), progress=False)
    assert _fingerprint(tmp_path / "a" / "run" / "last") == _fingerprint(tmp_path / "b" / "run" / "last")
    assert _fingerprint(tmp_path / "a" / "run" / "final") == _fingerprint(tmp_path / "b" / "run" / "final")
    # No pickle anywhere in a run folder.
    assert not list((tmp_path / "b").rglob("*.pt")) and not list((tmp_path / "b").rglob("*.bin"))


def test_fine_tune_from_checkpoint_keeps_record(tiny_backbone, commer_cache, tmp_path, fixed_examples):
    first = train_mod.train(training_config(tiny_backbone, commer_cache, tmp_path / "a", max_steps=2), progress=False)
    second = train_mod.train(training_config(tiny_backbone, commer_cache, tmp_path / "b", max_steps=2,
                                     init_checkpoint=first["final"]), progress=False)
    from commer.checkpoint import read_config
    assert len(read_config(second["final"]).training["stages"]) == 2


def test_prompt_tuning_trains_and_round_trips(tiny_backbone, commer_cache, tmp_path, fixed_examples):
    config = training_config(tiny_backbone, commer_cache, tmp_path, method="prompt_tuning", max_steps=20, eval_every=20,
                     lr_prompt=0.1)
    summary = train_mod.train(config, progress=False)
    assert summary["val_history"][-1]["val_ppl"] < summary["val_history"][0]["val_ppl"]
    from training.prompt_tuning import PromptTuning
    model = PromptTuning.from_pretrained(summary["final"], cache=commer_cache)
    assert model.soft_prompt.shape == (4, 64)
    assert not any(p.requires_grad for p in model.base.parameters())


def test_evaluate_methods(tiny_model):
    examples = word_examples(4)
    none = evaluate(tiny_model, "none", examples, 0, batch_size=2, max_new_tokens=3)
    with_docs = evaluate(tiny_model, "commer", examples, 2, batch_size=2, max_new_tokens=3)
    for row in (none, with_docs):
        assert row["examples"] == 4 and row["perplexity"] > 1 and 0 <= row["rougeL"] <= 1
    assert none["perplexity"] != with_docs["perplexity"]
    # ComMer's prompt is the instruction plus exactly K soft tokens, whatever the documents' length
    assert with_docs["mean_prompt_tokens"] == pytest.approx(none["mean_prompt_tokens"] + tiny_model.K)
    assert rouge_scores(["the cat sat"], ["the cat sat"])["rougeL"] == pytest.approx(1.0)


def test_train_cli_clear_error_for_missing_data(tmp_path, capsys):
    code = train_mod.main(["--task", "news", "--data", str(tmp_path / "absent.jsonl"), "--output_dir", str(tmp_path)])
    assert code == 2
    assert "absent.jsonl: news (HuffPost JSONL) file not found" in capsys.readouterr().err
    code = train_mod.main(["--task", "lamp4", "--data", str(F / "lamp4_questions.json"), "--output_dir", str(tmp_path)])
    assert code == 2 and "--data_outputs" in capsys.readouterr().err


def test_evaluate_shows_a_progress_bar(tiny_model, capsys):
    evaluate(tiny_model, "none", word_examples(4), 0, batch_size=2, max_new_tokens=2, generate=False)
    err = capsys.readouterr().err
    assert "evaluate none n=0" in err and "4/4" in err
    evaluate(tiny_model, "none", word_examples(2), 0, batch_size=2, max_new_tokens=2, generate=False, progress=False)
    assert "evaluate" not in capsys.readouterr().err


def test_autoencoding_examples_mixed_into_a_task(tmp_path):
    """autoencoding_ratio: single-document reconstruction examples join a task's training set, so
    task fine-tuning keeps the compressor compressing."""
    config = TrainConfig(task="news", data=["unused.jsonl"], autoencoding_data=[str(F / "wikitext_sample.txt")],
                         autoencoding_ratio=0.5)
    mixed = train_mod.autoencoding_examples(config, 10)
    assert len(mixed) == 5
    assert all(len(e.documents) == 1 and e.answer and e.answer in e.documents[0] for e in mixed)
    assert len({e.instruction for e in mixed}) == 1   # "What does document 1 contain?"-style, one template
    assert train_mod.autoencoding_examples(config.model_copy(update={"autoencoding_ratio": 0.0}), 10) == []
    with pytest.raises(ValueError, match="needs autoencoding_data"):
        TrainConfig(task="news", autoencoding_ratio=0.5)
    with pytest.raises(ValueError, match="method=commer on a task other than pretrain"):
        TrainConfig(task="news", method="prompt_tuning", autoencoding_data=["x.txt"], autoencoding_ratio=0.5)


def test_grow_compression_tokens_from_a_checkpoint_and_resume(tiny_backbone, commer_cache, tiny_checkpoint,
                                                              tmp_path, fixed_examples):
    """grow_compression_tokens: fine-tune a K=4 checkpoint as K=8; a resumed run keeps its grown K."""
    config = training_config(tiny_backbone, commer_cache, tmp_path, init_checkpoint=tiny_checkpoint,
                     grow_compression_tokens=8, max_steps=4, eval_every=2, stop_after_steps=2)
    assert train_mod.train(config, progress=False)["stopped"]
    summary = train_mod.train(config.model_copy(update={"stop_after_steps": None}), progress=False)
    from commer import ComMer
    assert ComMer.from_pretrained(summary["final"], cache=commer_cache).K == 8
    with pytest.raises(ValueError, match="grow_compression_tokens needs method=commer and an init_checkpoint"):
        TrainConfig(task="news", grow_compression_tokens=32)


def test_compression_spread_is_logged_and_a_collapse_warned(tiny_backbone, commer_cache, tmp_path, fixed_examples,
                                                              monkeypatch, caplog):
    from commer import ComMer
    config = training_config(tiny_backbone, commer_cache, tmp_path, max_steps=3, eval_every=3)
    train_mod.train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    spreads = [r["compression_spread"] for r in rows if "val_ppl" in r]
    assert len(spreads) == 2 and all(s > 0.05 for s in spreads)  # distinct documents, a healthy compressor
    # One vector for every document: the spread is 0 and training says so.
    model = ComMer.from_pretrained(str(tmp_path / "run" / "final"), cache=commer_cache)
    assert model.compression_spread(["same text"] * 4) == pytest.approx(0.0, abs=1e-6)
    monkeypatch.setattr(ComMer, "compression_spread", lambda self, texts: 0.009)
    with caplog.at_level("WARNING", logger="training"):
        train_mod.train(config.model_copy(update={"output_dir": str(tmp_path / "run2")}), progress=False)
    assert "compression spread 0.0090 < 0.05" in caplog.text
    # A task prompt compresses nothing: no spread, no warning.
    pt = config.model_copy(update={"method": "prompt_tuning", "output_dir": str(tmp_path / "pt")})
    train_mod.train(pt, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("compression_spread") is None for r in rows)
