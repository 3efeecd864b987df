"""The evaluation's query-time merge rows (issue 16): same examples, same choice as the generate job."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from commer import ComMer
from commer.retrieval import top_m_by_bm25, top_m_by_similarity
from training.evaluation import controls as controls_evaluation
from training.evaluate_task import score_examples
from training.evaluation.retrieved_rows import AuthorPools, article_id
from training.tasks import DataError, news

from test_evaluate_controls import write_huffpost  # the same synthetic HuffPost file as the controls test


@pytest.fixture(scope="module")
def controls(tiny_checkpoint, commer_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieved-rows")
    data = root / "news.jsonl"
    write_huffpost(data)
    args = controls_evaluation.build_parser().parse_args([
        "--data", str(data), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
        "--documents", "1", "4", "--text_documents", "--prompt_tuning_documents", "--retrieved_top_m", "1", "2",
        "--similarity_top_m", "1", "--max_examples", "10", "--max_new_tokens", "2", "--probe_examples", "0",
        "--resamples", "200", "--batch_size", "4", "--output", str(root / "out")])
    args.argv = ["(test)"]
    result = controls_evaluation.run(args)
    model = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    examples = news.load(str(data), "test", 4, max_examples=10)
    return {"result": result, "rows": {r["label"]: r for r in result["rows"]}, "model": model,
            "examples": examples, "articles": news.authors_of(str(data), "test"), "out": root / "out"}


def others(articles, example):
    """(texts, in doc_id order) of the author's articles other than the example's own."""
    rows = articles[example.user_id]
    pairs = sorted((article_id(example.user_id, j, a), news.format_document(a["headline"], a["short_description"]))
                   for j, a in enumerate(rows))
    return [t for d, t in pairs if d != example.example_id]


def test_rows_are_added_with_paired_intervals(controls):
    rows = controls["rows"]
    labels = [r["label"] for r in controls["result"]["rows"]]
    assert labels[labels.index("ComMer concat 4") + 1:] == [
        "ComMer retrieved top-1 (bm25)", "ComMer retrieved top-2 (bm25)", "ComMer similarity top-1", "ComMer merge=all",
        "text retrieved top-1 (bm25)", "text retrieved top-2 (bm25)"]
    assert rows["ComMer retrieved top-2 (bm25)"]["mean_documents"] == 2
    assert rows["ComMer merge=all"]["mean_documents"] == 17   # 18 articles per author, minus the query's own
    # The same K soft tokens whatever M: the prompt costs what ComMer own 4 costs.
    assert rows["ComMer merge=all"]["mean_prompt_tokens"] == rows["ComMer own 4"]["mean_prompt_tokens"]
    for label in ("ComMer retrieved top-1 (bm25)", "ComMer similarity top-1", "ComMer merge=all"):
        r = rows[label]
        assert r["examples"] == 10
        for key in ("perplexity", "delta_perplexity", "delta_rougeL"):
            lo, hi = r[f"{key}_ci"]
            assert lo - 1e-9 <= r[key] <= hi + 1e-9, (label, key)
        assert r["delta_perplexity"] == pytest.approx(r["perplexity"] - rows["ComMer own 4"]["perplexity"])
    assert 0 <= rows["ComMer retrieved top-1 (bm25)"]["overlap_with_own"] <= 1
    table = (controls["out"] / "table.md").read_text()
    assert "| ComMer retrieved top-1 (bm25) |" in table and "**Query-time merge**" in table
    kinds = [json.loads(line)["kind"] for line in (controls["out"] / "rows.jsonl").read_text().splitlines()]
    assert "retrieval" in kinds


def test_each_row_merges_exactly_the_documents_the_generate_job_would(controls):
    """Per example, the row's answer NLL equals the model's with the chosen compressions' mean."""
    model, rows = controls["model"], controls["rows"]
    for e, i in ((controls["examples"][0], 0), (controls["examples"][7], 7)):
        texts = others(controls["articles"], e)
        comps = model.compress(texts).numpy().astype(np.float64)
        query = model.compress([e.instruction])[0]
        choices = {"ComMer retrieved top-1 (bm25)": top_m_by_bm25(e.instruction, texts, 1),
                   "ComMer retrieved top-2 (bm25)": top_m_by_bm25(e.instruction, texts, 2),
                   "ComMer similarity top-1": top_m_by_similarity(query, comps, 1),
                   "ComMer merge=all": list(range(len(texts)))}

        def nll(indices):
            soft = torch.as_tensor(comps[sorted(indices)].mean(0), dtype=torch.float32)
            return float(model.answer_nll([soft], [e.instruction], [e.answer])[0][0])

        for label, chosen in choices.items():
            # A wrong choice of the same kind: one document swapped for one not chosen (merge=all: one left out).
            wrong = chosen[1:] if len(chosen) == len(texts) else \
                [next(j for j in range(len(texts)) if j not in chosen)] + chosen[1:]
            got, right, other = rows[label]["_nll"][i], nll(chosen), nll(wrong)
            # The tiny random model barely reacts to its soft prompt, so "equal" is measured against how
            # far a wrong choice moves the NLL, not against a fixed relative tolerance.
            assert right != other, label
            assert abs(got - right) <= 1e-6 * abs(right) + 1e-2 * abs(other - right), (label, i, got, right, other)


def test_text_rows_give_the_bm25_rows_documents_as_text(controls):
    """The in-prompt baseline of the query-time merge: the same M documents as ComMer retrieved top-M
    (bm25), as text before the instruction, scored by the frozen backbone."""
    model, row = controls["model"], controls["rows"]["text retrieved top-2 (bm25)"]
    assert row["mean_documents"] == 2 and row["mean_prompt_tokens"] > controls["rows"]["none"]["mean_prompt_tokens"]
    for i in (0, 5):
        e = controls["examples"][i]
        texts = others(controls["articles"], e)
        as_text = replace(e, documents=[texts[j] for j in top_m_by_bm25(e.instruction, texts, 2)])
        want = score_examples(model, "text", [as_text], 2, generate=False)["nll"][0]
        assert row["_nll"][i] == pytest.approx(want, rel=1e-5)
        wrong = replace(e, documents=as_text.documents[::-1][:1] + [t for t in texts if t not in as_text.documents][:1])
        assert row["_nll"][i] != pytest.approx(score_examples(model, "text", [wrong], 2, generate=False)["nll"][0],
                                               rel=1e-5)


def test_the_pool_path_scores_own_documents_as_the_own_row_does(controls):
    """Merging the own-4 documents' pooled compressions reproduces the ComMer own 4 row: the rows differ
    only in which documents they merge, never in how they are compressed or scored."""
    pools, model = AuthorPools(controls["model"], controls["articles"]), controls["model"]
    for i, e in enumerate(controls["examples"][:4]):
        comps, texts = pools.candidates(e)
        soft = torch.as_tensor(comps[sorted(texts.index(d) for d in e.documents[:4])].mean(0), dtype=torch.float32)
        nll = float(model.answer_nll([soft], [e.instruction], [e.answer])[0][0])
        assert controls["rows"]["ComMer own 4"]["_nll"][i] == pytest.approx(nll, rel=1e-5)


def test_candidates_are_the_authors_other_articles(controls):
    pools = AuthorPools(controls["model"], controls["articles"])
    e = controls["examples"][0]
    comps, texts = pools.candidates(e)
    assert texts == others(controls["articles"], e) and comps.shape[0] == 17
    assert pools.compressed == 18 and len(e.documents) == 4 and set(e.documents) <= set(texts)
    pools.candidates(controls["examples"][0])
    assert pools.compressed == 18   # compressed once per author
    stranger = type(e)(documents=[], instruction="x", answer="y", user_id="nobody", example_id="z")
    with pytest.raises(DataError, match="nobody"):
        pools.candidates(stranger)
