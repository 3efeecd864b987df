"""Issue 23: the objectives that make a profile carry its user -- distillation from a teacher
that reads the documents as text (cached top-k), and the user-contrast hinge -- on the tiny model,
with their gradients checked against finite differences."""
import json

import pytest
import torch
import torch.nn.functional as F

from training import train as train_mod
from training.config import ConfigError, TrainConfig
from training.distillation import (
    FROZEN_TEXT, TeacherCache, distillation_kl, example_key, prepare_cache, top_k_targets,
)
from training.objectives import Objective
from training.prompt_tuning import PromptTuning
from training.tasks import AUTOENCODING, DataError, Example
from training.tasks import news

from test_training_loop import training_config, word_examples


def _with_other(examples):
    """Each example also carries the next example's documents as another author's."""
    return [Example(e.documents, e.instruction, e.answer, e.user_id, e.example_id,
                    meta={"other_documents": examples[(i + 1) % len(examples)].documents})
            for i, e in enumerate(examples)]


# ---- the KL over the teacher's top k ----------------------------------------------------

def test_top_k_kl_is_the_exact_kl_with_every_token_and_a_lower_bound_with_fewer():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 40, dtype=torch.float64), torch.randn(5, 40, dtype=torch.float64)
    exact = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="sum")
    full = top_k_targets(teacher, 40, 1.0)
    assert torch.allclose(distillation_kl(student, (*full, None), 1.0), exact, atol=1e-8)
    for k in (1, 4, 16):  # coarsening can only lose divergence (data processing inequality)
        coarse = distillation_kl(student, (*top_k_targets(teacher, k, 1.0), None), 1.0)
        assert 0 <= coarse <= exact + 1e-9
    same = top_k_targets(student, 8, 2.0)
    assert abs(float(distillation_kl(student, (*same, None), 2.0))) < 1e-9
    # Temperature: both sides tempered, scaled by T².
    tempered = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1), log_target=True,
                        reduction="sum") * 4
    assert torch.allclose(distillation_kl(student, (*top_k_targets(teacher, 40, 2.0), None), 2.0), tempered)


def test_distillation_gradient_matches_finite_differences():
    torch.manual_seed(1)
    target = (*top_k_targets(torch.randn(3, 12, dtype=torch.float64), 5, 1.5), None)
    student = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: distillation_kl(s, target, 1.5), (student,))


def test_contrast_gradient_matches_finite_differences():
    objective = Objective(contrast_weight=1.0, contrast_margin=0.5)
    n = torch.tensor([3.0, 5.0], dtype=torch.float64)

    def hinge(own, other):  # the term as Objective._contrast forms it from summed NLLs
        gap = other / n - own / n
        return (n * torch.relu(objective.contrast_margin - gap)).sum()
    own = torch.tensor([6.0, 9.0], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([6.6, 13.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hinge, (own, other))
    hinge(own, other).backward()
    # Example 0 is inside the margin (gap 0.2 < 0.5): own pushed down, other up; example 1 (gap 0.8) is done.
    assert own.grad.tolist() == [1.0, 0.0] and other.grad.tolist() == [-1.0, 0.0]


# ---- the objective on the tiny model --------------------------------------------------------

def test_objective_adds_exactly_its_terms_and_reaches_the_compressor(tiny_model, tiny_backbone, commer_cache, tmp_path):
    examples = _with_other(word_examples(4))
    cache = prepare_cache(tmp_path / "teacher", FROZEN_TEXT, examples, k=16, temperature=1.0,
                          backbone=tiny_backbone, cache_dir=commer_cache)
    tiny_model.train()
    tokens = 40.0
    ce, ce_parts = Objective()(tiny_model, examples, tokens)
    both, parts = Objective(0.7, cache, 2.0, 0.3)(tiny_model, examples, tokens)
    assert set(parts) == {"ce", "kl", "contrast", "gap"} and parts["kl"] > 0 and parts["ce"] == pytest.approx(ce_parts["ce"])
    expected = (parts["ce"] + 0.7 * parts["kl"] + 2.0 * parts["contrast"]) / tokens
    assert float(both) == pytest.approx(expected, rel=1e-5)
    # CE alone is the plain answer NLL of the merged own documents.
    nll, _ = tiny_model.answer_nll(tiny_model.merge_documents([e.documents for e in examples]),
                                   [e.instruction for e in examples], [e.answer for e in examples])
    assert float(ce) == pytest.approx(float(nll.sum()) / tokens, rel=1e-5)
    # The new terms reach the compressor: KL alone and contrast alone each move the embeddings.
    for objective in (Objective(1.0, cache), Objective(contrast_weight=1.0, contrast_margin=100.0)):
        tiny_model.zero_grad()
        loss, p = objective(tiny_model, examples, tokens)
        (loss - p["ce"] / tokens).backward()  # the added term only
        grad = tiny_model.compression_embeddings.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_examples_without_teacher_or_other_documents_add_cross_entropy_only(tiny_model, tiny_backbone,
                                                                             commer_cache, tmp_path):
    task = word_examples(2)
    cache = prepare_cache(tmp_path / "t", FROZEN_TEXT, task, 8, 1.0, tiny_backbone, commer_cache)
    autoencoding = [Example(["Document 1: a river"], "What does document 1 contain?", "a river")]
    ce, _ = Objective()(tiny_model, autoencoding, 10.0)
    full, parts = Objective(1.0, cache, 1.0, 10.0)(tiny_model, autoencoding, 10.0)
    assert float(full) == pytest.approx(float(ce)) and parts["kl"] == 0 and parts["gap"] is None


# ---- the teacher cache ------------------------------------------------------------------------

def test_teacher_cache_round_trip_extends_and_refuses_another_teacher(tiny_backbone, commer_cache, tmp_path):
    examples = word_examples(6)
    folder = tmp_path / "cache"
    first = prepare_cache(folder, FROZEN_TEXT, examples[:4], 8, 2.0, tiny_backbone, commer_cache)
    loaded = TeacherCache.load(folder)
    assert len(loaded) == 4 and loaded.k == 8 and loaded.temperature == 2.0
    key = example_key(examples[0])
    for a, b in zip(first.get(key), loaded.get(key)):
        assert torch.equal(a, b)
    ids, logp, rest, answer = loaded.get(key)
    assert ids.shape == logp.shape == (len(answer), 8) and rest.shape == (len(answer),)
    # Top-8 plus the rest is a distribution.
    assert torch.allclose(torch.logsumexp(torch.cat([logp, rest[:, None]], 1), 1), torch.zeros(len(answer)), atol=1e-4)
    # More examples extend it (the first four are not rescored); the same again loads as is.
    extended = prepare_cache(folder, FROZEN_TEXT, examples, 8, 2.0, tiny_backbone, commer_cache)
    assert len(extended) == 6 and torch.equal(extended.get(key)[1], first.get(key)[1])
    assert json.loads((folder / "teacher.json").read_text())["teacher"]["reference"] == FROZEN_TEXT
    with pytest.raises(DataError, match="top-8 at temperature 2.0"):
        prepare_cache(folder, FROZEN_TEXT, examples, 16, 2.0, tiny_backbone, commer_cache)
    pt = PromptTuning.from_backbone(tiny_backbone, 4, cache=commer_cache)
    pt.save_pretrained(str(tmp_path / "pt"))
    with pytest.raises(DataError, match="made by 'text'"):
        prepare_cache(folder, str(tmp_path / "pt"), examples, 8, 2.0, tiny_backbone, commer_cache)


def test_prompt_tuning_teacher_reads_documents_as_text_behind_its_soft_prompt(tiny_backbone, commer_cache, tmp_path):
    examples = word_examples(3)
    pt = PromptTuning.from_backbone(tiny_backbone, 4, cache=commer_cache)
    pt.save_pretrained(str(tmp_path / "pt"))
    cache = prepare_cache(tmp_path / "c", str(tmp_path / "pt"), examples, 400, 1.0, tiny_backbone, commer_cache)
    with torch.no_grad():
        nll, _ = pt.answer_nll([e.documents for e in examples], [e.instruction for e in examples],
                               [e.answer for e in examples])
    for e, expected in zip(examples, nll):
        ids, logp, _, answer = cache.get(example_key(e))
        # With every token kept, the cached log-prob of each answer token is the teacher's own.
        picked = logp.gather(1, (ids == answer[:, None].int()).float().argmax(1, keepdim=True))
        assert float(-picked.sum()) == pytest.approx(float(expected), rel=1e-4)


# ---- configuration, data and the loop -------------------------------------------------------

def test_config_checks_the_objectives():
    with pytest.raises(ConfigError, match="needs distill_teacher"):
        TrainConfig.from_args(["--distill_weight", "1"])
    with pytest.raises(ConfigError, match="for method=commer"):
        TrainConfig.from_args(["--method", "prompt_tuning", "--contrast_weight", "1"])
    with pytest.raises(ConfigError, match="needs task=news"):
        TrainConfig.from_args(["--task", "pretrain", "--contrast_weight", "1"])


def test_other_author_documents_follow_the_control_rule(tmp_path):
    rows = [{"headline": f"{a} headline {i}", "short_description": f"{a} writes about topic {i} and more",
             "authors": a} for a in ("Ann", "Bob", "Cid") for i in range(5)]
    data = tmp_path / "news.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    articles = news.read_articles(str(data))
    examples = [Example(["x"], f"Generate a headline for the following article: {a} topic {i}", "h", a,
                        f"{a}#{i}", meta={"description": f"{a} topic {i}"}) for a in articles for i in range(3)]
    kept = news.with_other_author(examples, articles, 2, seed=0)
    replaced = news.other_author_examples(examples, articles, 2, seed=0)
    for e, k, r in zip(examples, kept, replaced):
        assert k.documents == e.documents and k.meta["other_author"] != e.user_id
        assert k.meta["other_documents"] == r.documents and len(r.documents) == 2
        assert all(k.meta["other_author"] in d for d in r.documents)  # the other author's own articles
    assert news.with_other_author(examples, articles, 2, seed=0) == kept  # seeded, not random


def test_training_with_both_terms_and_autocast_runs_logs_and_resumes(tiny_backbone, commer_cache, tmp_path, monkeypatch):
    examples = _with_other(word_examples(8))
    monkeypatch.setattr(train_mod, "load_examples", lambda config, split, limit=None: list(examples))
    kw = dict(distill_teacher=FROZEN_TEXT, distill_weight=0.5, distill_top_k=8, contrast_weight=1.0,
              contrast_margin=0.2, autocast="bfloat16", max_steps=4, eval_every=2)
    whole = train_mod.train(training_config(tiny_backbone, commer_cache, tmp_path / "a", **kw), progress=False)
    records = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4 and all({"ce", "kl", "contrast", "gap"} <= set(r) for r in steps)
    assert (tmp_path / "a" / "run" / "teacher" / "teacher.safetensors").exists()
    # Killed after 2 steps and resumed: the same weights as the uninterrupted run.
    half = training_config(tiny_backbone, commer_cache, tmp_path / "b", stop_after_steps=2, **kw)
    assert train_mod.train(half, progress=False)["stopped"]
    resumed = train_mod.train(half.model_copy(update={"stop_after_steps": None}), progress=False)
    from commer import ComMer
    a = ComMer.from_pretrained(whole["final"], cache=commer_cache)
    b = ComMer.from_pretrained(resumed["final"], cache=commer_cache)
    assert torch.allclose(a.compression_embeddings, b.compression_embeddings, atol=1e-6)


def test_a_task_prompt_trains_with_the_task_and_stays_out_of_reconstruction(tiny_model, tiny_backbone, commer_cache,
                                                                            tmp_path, monkeypatch):
    task = word_examples(2)
    reconstruction = [Example(["Document 1: a river"], "What does document 1 contain?", "a river",
                              meta={AUTOENCODING: True})]
    before = [float(Objective()(tiny_model, batch, 10.0)[0]) for batch in (task, reconstruction)]
    tiny_model.attach_task_prompt(torch.randn(2, tiny_model.hidden_size) * float(tiny_model.embed.weight.std()))
    tiny_model.train()
    loss, _ = Objective()(tiny_model, task, 10.0)
    assert float(loss) != pytest.approx(before[0], rel=1e-4)
    loss.backward()
    assert tiny_model.task_prompt.grad.abs().sum() > 0
    tiny_model.zero_grad()
    loss, _ = Objective()(tiny_model, reconstruction, 10.0)
    assert float(loss) == pytest.approx(before[1], rel=1e-5)
    loss.backward()
    assert tiny_model.task_prompt.grad is None or tiny_model.task_prompt.grad.abs().sum() == 0
    # The evaluation counts the positions it reads: K + P for a profile, none without one.
    from training.evaluate_task import prompt_tokens
    words = len(tiny_model.prompt_ids("x"))
    assert prompt_tokens(tiny_model, "commer", ["a"], "x") == tiny_model.K + 2 + words
    assert prompt_tokens(tiny_model, "none", ["a"], "x") == words
    # Training from a prompt-tuning folder: the run's checkpoint carries it, trained at its own rate.
    start = PromptTuning.from_backbone(tiny_backbone, 2, cache=commer_cache)
    start.save_pretrained(str(tmp_path / "tp"))
    monkeypatch.setattr(train_mod, "load_examples", lambda config, split, limit=None: word_examples(8))
    config = training_config(tiny_backbone, commer_cache, tmp_path / "a", init_task_prompt=str(tmp_path / "tp"),
                             lr_task_prompt=1e-2, max_steps=2, eval_every=2)
    model = train_mod.build_model(config)
    assert {g["name"]: g["lr"] for g in train_mod.param_groups(model, config)}["task_prompt"] == 1e-2
    from commer import ComMer
    trained = ComMer.from_pretrained(train_mod.train(config, progress=False)["final"], cache=commer_cache)
    assert trained.config.task_prompt_tokens == 2
    assert not torch.allclose(trained.task_prompt.data, start.soft_prompt.data)
    with pytest.raises(ValueError, match="init_task_prompt"):
        training_config(tiny_backbone, commer_cache, tmp_path, method="prompt_tuning", init_task_prompt="x")
