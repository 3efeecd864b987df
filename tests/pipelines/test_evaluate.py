"""evaluate job (DirectRunner): generate → evaluate end to end, LaMP references, plots."""
import json

import pytest

from pipelines import evaluate, generate
from delta_helpers import rows as table_rows
from schemas import Prediction, arrow_schema, read_parquet, write_parquet
from test_generate import RUNNER, write_profiles, write_queries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("quality_vs_doc_count.png", "per_user_rougeL.png", "perplexity_histogram.png")


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    from PIL import Image
    with Image.open(path) as image:
        image.verify()
    import matplotlib.image
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100


def _lines(folder, prefix):
    """The current rows of one of evaluate's tables (OUTPUT/per_query, OUTPUT/per_user)."""
    return table_rows(folder / prefix)


def test_generate_then_evaluate(tiny_checkpoint, commer_cache, tmp_path):
    from commer import ComMer
    model = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    profiles = write_profiles(model, tmp_path / "commer_output")
    queries = write_queries(tmp_path / "queries.jsonl")
    predictions, metrics_dir = tmp_path / "predictions", tmp_path / "metrics"
    assert generate.main(RUNNER + [f"--profiles={profiles}", f"--queries={queries}", f"--output={predictions}",
                                   f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}",
                                   "--max_new_tokens=5"]) == 0
    assert evaluate.main(RUNNER + [f"--predictions={predictions}", f"--output={metrics_dir}"]) == 0

    rows = read_parquet(str(predictions)).to_pylist()
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    with_ref = [r for r in rows if r["reference"] is not None]
    from rouge_score.rouge_scorer import RougeScorer
    scorer = RougeScorer(["rouge1", "rougeL"])
    direct = [scorer.score(r["reference"].strip(), r["prediction"].strip()) for r in with_ref]
    overall = metrics["overall"]
    assert overall["queries"] == 5 and overall["with_reference"] == 4 and overall["personalized"] == 4
    assert overall["rouge1"] == pytest.approx(sum(s["rouge1"].fmeasure for s in direct) / 4)
    assert overall["rougeL"] == pytest.approx(sum(s["rougeL"].fmeasure for s in direct) / 4)
    import math
    assert overall["perplexity"]["geometric_mean"] == pytest.approx(
        math.exp(sum(math.log(r["perplexity"]) for r in with_ref) / 4))
    # The same queries scored without the profile, in generate's one pass: the pairs evaluate compares.
    pairs = [r for r in with_ref if r["personalized"]]
    assert pairs and all(r["perplexity_unpersonalized"] is not None for r in pairs)
    assert all(r["perplexity_unpersonalized"] is None for r in rows if not r["personalized"])
    unpersonalized = model.perplexity([None] * len(pairs), [r["instruction"] for r in pairs],
                                      [r["reference"] for r in pairs]).tolist()
    assert [r["perplexity_unpersonalized"] for r in pairs] == pytest.approx(unpersonalized, rel=1e-4)
    paired = overall["paired"]
    assert paired["queries"] == len(pairs) and paired["ratio"] == pytest.approx(math.exp(sum(
        math.log(r["perplexity"] / r["perplexity_unpersonalized"]) for r in pairs) / len(pairs)))
    assert sum(b["paired"]["queries"] for b in metrics["by_doc_count"]) == len(pairs)
    assert next(b for b in metrics["by_doc_count"] if b["bucket"] == "0")["paired"]["queries"] == 0
    assert metrics["by_personalization"]["not_personalized"]["queries"] == 1
    assert metrics["by_personalization"]["personalized"]["queries"] == 4
    assert [(b["bucket"], b["queries"]) for b in metrics["by_doc_count"]] == [("0", 1), ("2", 2), ("3-4", 2)]
    assert metrics["per_user"]["users"] == 3 and metrics["per_user"]["rougeL"]["count"] == 3
    assert metrics["counts"]["predictions_read"] == 5

    per_query = {r["query_id"]: r for r in _lines(metrics_dir, "per_query")}
    assert sorted(per_query) == ["q1", "q2", "q3", "q4", "q5"]
    assert per_query["q4"]["rouge1"] is None and per_query["q4"]["perplexity"] is None
    assert per_query["q1"]["perplexity"] == pytest.approx(next(r for r in rows if r["query_id"] == "q1")["perplexity"])
    per_user = {r["user_id"]: r for r in _lines(metrics_dir, "per_user")}
    assert per_user["user_b"]["queries"] == 2 and per_user["user_b"]["with_reference"] == 1
    assert per_user["user_nobody"]["personalized"] == 0

    for name in PLOTS:
        _check_png(metrics_dir / name)
    assert sorted(metrics["files"]["plots"]) == sorted(str(metrics_dir / p) for p in PLOTS)
    assert not list(metrics_dir.rglob(evaluate.AGGREGATES))


# Predictions with known texts, and the LaMP outputs JSON that holds their references.
FIXED = [  # (query_id, user, doc_count, prediction, reference, ROUGE-1, ROUGE-L), values as in test_metrics
    ("10", "u1", 3, "the cat sat on the mat", "the cat is on the mat", 5 / 6, 5 / 6),
    ("11", "u1", 3, "Council approves new bicycle lanes", "City council votes for bicycle lanes downtown", 0.5, 0.5),
    ("12", "u2", 1, "lanes bicycle council", "council bicycle lanes", 1.0, 1 / 3),
    ("13", "u3", 0, "Markets rallied", "market rallies", 0.0, 0.0),
]


def _write_fixed_predictions(folder, stored_reference=None):
    records = [Prediction(user_id=u, query_id=q, prediction=p, personalized=n > 0, doc_count=n,
                          reference=stored_reference, perplexity=7.0 if stored_reference else None,
                          prompt_tokens=10 + n, model_fingerprint="fp")
               for q, u, n, p, *_ in FIXED]
    folder.mkdir()
    write_parquet(records, str(folder / "predictions-00000-of-00001.parquet"), arrow_schema(Prediction))
    return str(folder)


def test_lamp_references_exact_rouge(tmp_path):
    predictions = _write_fixed_predictions(tmp_path / "predictions", stored_reference="stale text")
    golds = {"task": "LaMP_4", "golds": [{"id": q, "output": r} for q, _, _, _, r, *_ in FIXED]
             + [{"id": "99", "output": "a reference nobody predicted"}]}
    (tmp_path / "golds.json").write_text(json.dumps(golds))
    out = tmp_path / "metrics"
    assert evaluate.main(RUNNER + [f"--predictions={predictions}", f"--references={tmp_path / 'golds.json'}",
                                   f"--output={out}", "--no_plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    assert overall["with_reference"] == 4
    assert overall["rouge1"] == pytest.approx((5 / 6 + 0.5 + 1.0 + 0.0) / 4, abs=1e-12)
    assert overall["rougeL"] == pytest.approx((5 / 6 + 0.5 + 1 / 3 + 0.0) / 4, abs=1e-12)
    # generate scored another reference text, so its perplexities do not apply to these.
    assert overall["perplexity"]["count"] == 0
    counts = metrics["counts"]
    assert counts["references_read"] == 5 and counts["references_without_prediction"] == 1
    assert counts["perplexity_dropped_reference_changed"] == 4
    per_user = {r["user_id"]: r for r in _lines(out, "per_user")}
    assert per_user["u1"]["rouge1"] == pytest.approx((5 / 6 + 0.5) / 2, abs=1e-12)
    assert metrics["per_user"]["rougeL"]["mean"] == pytest.approx(((5 / 6 + 0.5) / 2 + 1 / 3 + 0.0) / 3)
    assert [b["bucket"] for b in metrics["by_doc_count"]] == ["0", "1", "3-4"]
    assert metrics["files"]["plots"] == [] and not list(out.glob("*.png"))


def test_jsonl_references_and_stemmer(tmp_path):
    predictions = _write_fixed_predictions(tmp_path / "predictions")
    refs = tmp_path / "refs.jsonl"
    refs.write_text("\n".join(json.dumps({"query_id": q, "reference": r}) for q, _, _, _, r, *_ in FIXED)
                    + "\n{not json\n")
    out = tmp_path / "metrics"
    assert evaluate.main(RUNNER + [f"--predictions={predictions}", f"--references={refs}", f"--output={out}",
                                   "--use_stemmer"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # With stemming "Markets rallied" matches "market rallies" fully.
    assert metrics["overall"]["rouge1"] == pytest.approx((5 / 6 + 0.5 + 1.0 + 1.0) / 4, abs=1e-12)
    assert metrics["rouge"]["use_stemmer"] is True
    assert metrics["counts"]["references_invalid"] == 1
    for name in PLOTS:  # no perplexities: the plot says so instead of failing
        _check_png(out / name)


def test_missing_predictions_is_a_clear_error(tmp_path, capsys):
    from pipelines.runtime import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, RUNNER + [f"--predictions={tmp_path}", f"--output={tmp_path / 'm'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--predictions" in err and "Traceback" not in err


def test_corrupt_lamp_references_refused_before_running(tmp_path, capsys):
    from pipelines.runtime import run_cli
    predictions = _write_fixed_predictions(tmp_path / "predictions")
    (tmp_path / "golds.json").write_text('{"task": "LaMP_4", "golds": [{"id": "1", "output": "x"}')  # cut short
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, RUNNER + [f"--predictions={predictions}", f"--references={tmp_path / 'golds.json'}",
                                         f"--output={tmp_path / 'm'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "LaMP" in err and "Traceback" not in err and not (tmp_path / "m").exists()


def test_users_sharing_a_query_id_are_each_scored_and_bad_references_never_crash(tmp_path):
    """Issue 24: two users' "q1" are two scores (per user_id and query_id); an empty reference is not a
    reference; a references line no JSON decoder takes (huge integer, deep nesting) is counted invalid."""
    records = [Prediction(user_id=u, query_id=q, prediction=p, personalized=True, doc_count=1, model_fingerprint="fp")
               for u, q, p in (("u1", "q1", "the cat sat"), ("u2", "q1", "the cat sat on the mat"), ("u3", "q2", "x"))]
    (tmp_path / "predictions").mkdir()
    write_parquet(records, str(tmp_path / "predictions" / "p.parquet"), arrow_schema(Prediction))
    refs = tmp_path / "refs.jsonl"
    refs.write_bytes(b"\n".join([json.dumps({"query_id": "q1", "reference": "the cat is on the mat"}).encode(),
                                 json.dumps({"query_id": "q2", "reference": "   "}).encode(),
                                 b'{"query_id": "q3", "reference": ' + b"9" * 5000 + b"}", b"[" * 100_000]) + b"\n")
    out = tmp_path / "metrics"
    assert evaluate.main(RUNNER + [f"--predictions={tmp_path / 'predictions'}", f"--references={refs}",
                                   f"--output={out}", "--no_plots", "--max_dead_letter_fraction=1"]) == 0
    per_query = {(r["user_id"], r["query_id"]): r for r in _lines(out, "per_query")}
    assert sorted(per_query) == [("u1", "q1"), ("u2", "q1"), ("u3", "q2")]
    assert per_query[("u2", "q1")]["rouge1"] == pytest.approx(5 / 6) and per_query[("u3", "q2")]["rouge1"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["with_reference"] == 2 and metrics["counts"]["references_invalid"] == 3
    assert metrics["counts"].get("predictions_duplicate_query_id", 0) == 0
