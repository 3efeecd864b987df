"""Evaluation with controls, end to end on the tiny backbone, and the reconstruction probe."""
import json
import shutil

import numpy as np
import pytest
import torch

from training.evaluate_task import prompt_tokens, soft_prompts
from training.evaluation import controls
from training.evaluation.statistics import fit_power_law, token_perplexity
from training.probes import reconstruction_examples, reconstruction_perplexity
from training.tasks import news
from training.tasks.base import split_of

TOPICS = ["parks budget council", "frog rainforest biologists", "stocks inflation markets", "coffee prices farmers",
          "football league final", "museum art exhibit", "river flood rescue", "school lunch program",
          "rocket launch delay", "bakery bread recipe", "election polls voters", "hospital nurses strike",
          "train station repairs", "music festival tickets", "wildfire smoke warning", "startup funding round",
          "library book sale", "zoo panda birth"]


def _authors(split: str, count: int) -> list[str]:
    names = (f"Writer {i}" for i in range(10_000))
    return [a for a in names if split_of(a, news.FRACTIONS) == split][:count]


def write_huffpost(path, authors_per_split=None) -> list[str]:
    """A HuffPost-format file: 3 test authors with 18 articles each, 2 train authors."""
    test_authors = _authors("test", 3)
    rows = []
    for author in test_authors + _authors("train", 2):
        tag = author.split()[-1]
        for j, topic in enumerate(TOPICS):
            rows.append({"link": f"https://example.org/{tag}/{j}", "headline": f"{topic.title()} {tag}",
                         "category": "U.S. NEWS", "authors": author, "date": "2022-09-23",
                         "short_description": f"{author} on {topic}, story {j}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return test_authors


@pytest.fixture(scope="module")
def prompt_tuning_folder(tiny_backbone, commer_cache, tmp_path_factory):
    from training.prompt_tuning import PromptTuning
    folder = tmp_path_factory.mktemp("pt")
    PromptTuning.from_backbone(tiny_backbone, num_tokens=3, cache=commer_cache).save_pretrained(str(folder))
    return str(folder)


def test_news_load_takes_several_files(tmp_path):
    authors = write_huffpost(tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "b1.jsonl").write_text("\n".join(lines[:40]) + "\n")
    (tmp_path / "b2.jsonl").write_text("\n".join(lines[40:]) + "\n")
    one = news.load(str(tmp_path / "a.jsonl"), "test", 4)
    two = news.load([str(tmp_path / "b1.jsonl"), str(tmp_path / "b2.jsonl")], "test", 4)
    assert one == two and {e.user_id for e in one} == set(authors)


def test_controls_end_to_end(tiny_checkpoint, commer_cache, prompt_tuning_folder, tmp_path, monkeypatch):
    data = tmp_path / "news.jsonl"
    write_huffpost(data)
    out = tmp_path / "controls"
    args = controls.build_parser().parse_args([
        "--data", str(data), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
        "--prompt_tuning", prompt_tuning_folder, "--checkpoint_n1", tiny_checkpoint, "--checkpoint_n4", tiny_checkpoint,
        "--max_examples", "20", "--max_new_tokens", "3", "--probe_examples", "6", "--resamples", "200",
        "--output", str(out)])
    args.argv = ["(test)"]
    result = controls.run(args)

    labels = [r["label"] for r in result["rows"]]
    assert labels == ["none", "prompt tuning (no documents)", "ComMer own 1", "ComMer own 2", "ComMer own 4",
                      "ComMer own 8", "ComMer own 16", "ComMer other 4", "ComMer concat 4", "text 1 (frozen)",
                      "text 4 (frozen)", "text 8 (frozen)", "prompt tuning text 1", "prompt tuning text 4"]
    rows = {r["label"]: r for r in result["rows"]}
    assert all(r["examples"] == 20 for r in rows.values())
    # Prompt cost: K soft tokens for a mean, n·K for the concatenation, none without documents.
    K = 4
    assert rows["ComMer own 16"]["mean_prompt_tokens"] == rows["ComMer own 1"]["mean_prompt_tokens"] == \
        rows["none"]["mean_prompt_tokens"] + K
    assert rows["ComMer concat 4"]["mean_prompt_tokens"] == rows["none"]["mean_prompt_tokens"] + 4 * K
    assert rows["ComMer own 16"]["mean_documents"] == 16 and rows["text 8 (frozen)"]["mean_documents"] == 8
    assert rows["text 8 (frozen)"]["mean_prompt_tokens"] > rows["text 1 (frozen)"]["mean_prompt_tokens"]
    # Paired bootstrap: intervals contain their point estimates; the reference's difference is 0.
    for r in rows.values():
        for key in ("perplexity", "delta_perplexity", "rouge1", "rougeL", "delta_rougeL"):
            lo, hi = r[f"{key}_ci"]
            assert lo - 1e-9 <= r[key] <= hi + 1e-9, (r["label"], key)
    ref = rows[controls.REFERENCE]
    assert ref["delta_perplexity"] == 0 and ref["delta_perplexity_ci"] == [0.0, 0.0]
    lo, hi = ref["own_other_perplexity_ratio_ci"]
    assert lo <= ref["own_other_perplexity_ratio"] <= hi
    assert ref["own_other_perplexity_ratio"] == pytest.approx(ref["perplexity"] / rows["ComMer other 4"]["perplexity"])

    table = (out / "table.md").read_text()
    for label in labels:
        assert f"| {label} |" in table
    assert "no stemmer" in table and "(test)" in table and "Figure 6" in table and "Reconstruction probe" in table
    records = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("row") == len(labels)
    assert {r["kind"] for r in records} >= {"header", "fit", "probe", "figure6"}
    fig6 = result["extras"]["figure6"]
    assert fig6["difference"]["1"]["1"] == 0 and fig6["difference"]["4"]["4"] == 0
    probe = result["extras"]["probe"]
    assert [p["num_merged"] for p in probe] == [1, 2, 4, 8, 16] and "reference_perplexity" in probe[0]
    for name in ("perplexity_vs_documents.png", "reconstruction_vs_merged.png", "own_other_none.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume reuses the saved rows (same numbers, nothing rescored) when the settings match.
    args.resume, args.probe_examples, args.checkpoint_n1 = True, 0, None
    again = controls.run(args)
    assert [(r["label"], r["perplexity"], r["seconds"], r["rougeL"]) for r in again["rows"]] == \
        [(r["label"], r["perplexity"], r["seconds"], r["rougeL"]) for r in result["rows"]]
    assert again["rows"][4]["delta_perplexity_ci"] == [0.0, 0.0]

    # Rows are keyed by the weights' fingerprint, not their folder: a copied prompt-tuning folder
    # keeps its rows. A new prompt-tuning folder re-scores only the rows that use it; Figure 6
    # rows are cached too, and the run's own checkpoint reuses its "ComMer own m" rows.
    scored = []
    real_score_row = controls.score_row
    monkeypatch.setattr(controls, "score_row", lambda label, *a, **k: scored.append(label) or
                        real_score_row(label, *a, **k))
    moved = tmp_path / "pt_copy"
    shutil.copytree(prompt_tuning_folder, moved)
    args.prompt_tuning, args.checkpoint_n1 = str(moved), tiny_checkpoint
    assert controls.run(args)["extras"]["figure6"] == fig6 and scored == []
    from training.prompt_tuning import PromptTuning
    retrained = PromptTuning.from_pretrained(prompt_tuning_folder, cache=commer_cache)
    with torch.no_grad():
        retrained.soft_prompt.add_(0.01)
    retrained.save_pretrained(str(tmp_path / "pt_new"))
    args.prompt_tuning = str(tmp_path / "pt_new")
    third = controls.run(args)
    assert scored == ["prompt tuning (no documents)", "prompt tuning text 1", "prompt tuning text 4"]
    assert third["extras"]["figure6"] == fig6
    args.prompt_tuning = str(moved)  # the first run's soft prompt again (a label keeps its latest row)
    controls.run(args)

    # ROUGE for some rows only: rows saved with ROUGE still serve rows that do not need it...
    scored.clear()
    args.rouge_documents = [0, 4]
    assert [controls.decodes(args, n) for n in (0, 1, 4, 16)] == [True, False, True, False]
    assert not controls.decodes(args, 0, "merge_all")
    controls.run(args)
    assert scored == []
    # ...and rows saved without ROUGE are decoded again where it is asked for, and only there.
    args.output, args.no_generate, args.checkpoint_n1 = str(tmp_path / "partly"), True, None
    args.documents, args.text_documents, args.prompt_tuning_documents = [1, 4], [1], []
    args.example_documents = 16  # the first run's examples (built at n = 16), with fewer rows
    controls.run(args)
    scored.clear()
    args.no_generate = False
    fifth = controls.run(args)
    assert scored == ["none", "prompt tuning (no documents)", "ComMer own 4", "ComMer other 4", "ComMer concat 4"]
    assert all(("rougeL" in r) == (r["num_documents"] in (0, 4)) for r in fifth["rows"])
    assert fifth["header"]["largest_n"] == 16
    for row in fifth["rows"][:3]:  # none, prompt tuning, own 1: the same examples, so the same per-example NLL
        assert np.allclose(row["_nll"], rows[row["label"]]["_nll"], rtol=1e-6), row["label"]
    table = (tmp_path / "partly" / "table.md").read_text()
    assert "| ComMer own 1 |" in table and "| – | – | – |" in table and "delta_rougeL" in fifth["rows"][1]

    # A new checkpoint on the same backbone re-scores only the rows that read its weights: no
    # personalization, prompt tuning and documents as text are kept.
    from commer import ComMer
    changed = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    with torch.no_grad():
        changed.compression_embeddings.add_(0.01)
    changed.save_pretrained(str(tmp_path / "changed"))
    scored.clear()
    args.checkpoint = str(tmp_path / "changed")
    sixth = controls.run(args)
    assert scored == ["ComMer own 1", "ComMer own 4", "ComMer other 4", "ComMer concat 4"]
    assert [r["perplexity"] for r in sixth["rows"][:2]] == [r["perplexity"] for r in fifth["rows"][:2]]


def test_other_author_documents_come_from_another_test_author(tmp_path):
    data = tmp_path / "news.jsonl"
    authors = write_huffpost(data)
    examples = news.load(str(data), "test", 4)
    articles = news.authors_of(str(data), "test")
    assert sorted(articles) == sorted(authors)
    other = news.other_author_examples(examples, articles, 4, seed=0)
    again = news.other_author_examples(examples, articles, 4, seed=0)
    assert [e.documents for e in other] == [e.documents for e in again]
    for own, swapped in zip(examples, other):
        who = swapped.meta["other_author"]
        assert who != own.user_id and who in authors
        assert len(swapped.documents) == 4
        assert all(who in d and own.user_id not in d for d in swapped.documents)
        assert swapped.instruction == own.instruction and swapped.answer == own.answer


def test_bootstrap_statistic_is_token_level():
    nll, tokens = np.array([2.0, 10.0]), np.array([1.0, 4.0])
    assert token_perplexity(nll, tokens) == pytest.approx(np.exp(12 / 5))
    idx = np.array([[0, 0], [1, 1]])
    assert token_perplexity(nll, tokens, idx) == pytest.approx([np.exp(2.0), np.exp(2.5)])


def test_power_law_fit_recovers_exponent():
    ns = [1, 2, 4, 8, 16]
    fit = fit_power_law(ns, [3.0 * n ** -0.2 for n in ns])
    assert fit["loglog"]["b"] == pytest.approx(-0.2) and fit["loglog"]["r2"] == pytest.approx(1.0)


def test_reconstruction_probe(tiny_model):
    docs = [f"Short note {i} about topic {i * 7}." for i in range(12)]
    one, four = reconstruction_examples(docs, 1, 5), reconstruction_examples(docs, 4, 5)
    assert [e.answer for e in one] == [e.answer for e in four] == docs[:5]
    for e in four:
        n = int(e.instruction.split()[3])
        assert e.instruction == f"What does document {n} contain?"
        assert e.documents[n - 1] == f"Document {n}: {e.answer}" and len(set(e.documents)) == 4
    tiny_model.train()
    result = reconstruction_perplexity(tiny_model, docs, 4, num_examples=5, reference=True)
    assert tiny_model.training  # mode restored
    assert result["examples"] == 5 and result["perplexity"] > 1 and result["reference_perplexity"] > 1


def test_probe_documents_are_test_authors_short_descriptions(tmp_path):
    from training.probes import news_documents
    data = tmp_path / "news.jsonl"
    authors = write_huffpost(data)
    docs = news_documents(str(data))
    assert len(docs) == 3 * len(TOPICS) and docs == news_documents(str(data))
    assert all(d.split(" on ")[0] in authors and len(d) <= 150 for d in docs)
    assert news_documents(str(data), limit=5) == docs[:5]


def test_evaluate_by_function_is_the_command_line(monkeypatch):
    """The recipe calls controls.evaluate(...): the same settings, and the table's command line, as the flags."""
    seen = []
    monkeypatch.setattr(controls, "run", lambda args: seen.append(args) or {"table": ""})
    controls.evaluate(data=["a.jsonl", "b.jsonl"], checkpoint="ck", output="out", prompt_tuning_nodocs=None,
                      max_examples=40, num_threads=0, resume=True, no_generate=False)
    argv = ["--data", "a.jsonl", "b.jsonl", "--checkpoint", "ck", "--output", "out", "--max_examples", "40",
            "--num_threads", "0", "--resume"]
    assert seen[0].argv == argv
    expected = controls.build_parser().parse_args(argv)
    expected.argv = argv
    assert vars(seen[0]) == vars(expected)


INSTRUCTIONS = ["Generate a headline for: rivers rise", "Generate a headline for: a quiet market"]
ANSWERS = ["Rivers rise", "Markets calm"]


def test_an_example_without_documents_reads_the_own_task_prompt_alone(tiny_model):
    # evaluate_controls' "ComMer own 0": no documents -- nothing on a plain checkpoint,
    # the checkpoint's own task prompt alone (an empty profile) on one that has it; prompt tokens count it.
    assert soft_prompts(tiny_model, "commer", [[], []]) == [None, None]
    mixed = soft_prompts(tiny_model, "commer", [[], ["Text: rain on the river"]])  # a batch may mix both
    assert mixed[0] is None and mixed[1].shape == (tiny_model.K, tiny_model.hidden_size)
    bare = prompt_tokens(tiny_model, "commer", [], INSTRUCTIONS[0])
    assert bare == prompt_tokens(tiny_model, "none", [], INSTRUCTIONS[0])
    tp = torch.randn(3, tiny_model.hidden_size) * tiny_model.embed.weight.std()
    tiny_model.attach_task_prompt(tp)
    for method in ("commer", "commer_concat"):
        prompts = soft_prompts(tiny_model, method, [[], ["Text: rain on the river"]])
        assert prompts[0].shape == (0, tiny_model.hidden_size) and prompts[1].shape[0] > 0
        assert prompt_tokens(tiny_model, method, [], INSTRUCTIONS[0]) == bare + 3
    with torch.no_grad():
        scored, _ = tiny_model.answer_nll(soft_prompts(tiny_model, "commer", [[], []]), INSTRUCTIONS, ANSWERS)
        alone, _ = tiny_model.answer_nll([tp, tp], INSTRUCTIONS, ANSWERS, task_prompt=False)
    torch.testing.assert_close(scored, alone, atol=1e-5, rtol=1e-5)
