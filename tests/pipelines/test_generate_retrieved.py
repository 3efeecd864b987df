"""generate --merge=retrieved on the tiny model: profiles and compressions made by compress_users itself."""
import json

import numpy as np
import pytest

from commer import ComMer
from commer.retrieval import order_by_doc_id, top_m_by_bm25, top_m_by_similarity
from pipelines.compress_users import run as compress_users
from pipelines.runtime import run_cli
from schemas import DocumentCompression, from_table, read_parquet

RUNNER = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]

DOCUMENTS = {
    "user_a": {"a1": "The city council voted on the new bicycle lanes downtown.",
               "a2": "Local bakery wins award for its sourdough bread.",
               "a3": "Bicycle commuters welcome the council decision on lanes.",
               "a4": "Rain expected all weekend across the region."},
    "user_b": {"b1": "Quarterly earnings beat expectations for the chip maker.",
               "b2": "Stock markets rally as inflation cools.",
               "b3": "Chip shortage eases for car makers."},
}
QUERIES = [
    {"user_id": "user_a", "query_id": "q1", "instruction": "Write a headline about sourdough bread.",
     "reference": "Bakery wins bread award"},
    {"user_id": "user_a", "query_id": "q2", "instruction": "Write a headline about weekend rain.",
     "reference": "A wet weekend ahead"},
    {"user_id": "user_b", "query_id": "q3", "instruction": "Write a headline about inflation and markets.",
     "reference": "Markets rally on cooling inflation"},
    {"user_id": "user_nobody", "query_id": "q4", "instruction": "Write a headline about the weather.",
     "reference": "Sunny skies ahead"},
]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, commer_cache):
    return ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)


@pytest.fixture(scope="module")
def stored(tiny_checkpoint, commer_cache, tmp_path_factory):
    """Profiles and per-document compressions written by the main job (Delta tables)."""
    root = tmp_path_factory.mktemp("retrieved")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"user_id": u, "doc_id": d, "text": t}) + "\n"
                            for u, by_id in DOCUMENTS.items() for d, t in by_id.items()))
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    compress_users(["--input", str(docs), "--output", str(root / "out"), "--checkpoint", tiny_checkpoint,
                    "--cache_dir", commer_cache, "--direct_running_mode=in_memory", "--batch_size", "2",
                    "--document_compressions_output", str(root / "out" / "document_compressions")])
    assert (root / "out" / "document_compressions" / "_delta_log").is_dir()
    rows = from_table(read_parquet(str(root / "out" / "document_compressions")), DocumentCompression)
    by_user: dict = {}
    for r in rows:
        by_user.setdefault(r.user_id, {})[r.doc_id] = np.asarray(r.compression)
    return {"root": root, "docs": str(docs), "queries": str(queries), "profiles": str(root / "out"),
            "compressions": str(root / "out" / "document_compressions"), "by_user": by_user}


def generate(stored, checkpoint, cache, out, *flags) -> dict:
    from pipelines import generate as job
    code = job.main(RUNNER + [f"--queries={stored['queries']}", f"--output={out}", f"--checkpoint={checkpoint}",
                              f"--cache_dir={cache}", "--max_new_tokens=4", "--batch_size=2", *flags])
    assert code == 0
    return {r["query_id"]: r for r in read_parquet(str(out)).to_pylist()}


def candidates(stored, user):
    """A user's doc_ids, compressions and texts in the canonical (doc_id) order, as the job ranks them."""
    ids = sorted(stored["by_user"][user])
    return order_by_doc_id(ids, np.stack([stored["by_user"][user][d] for d in ids]),
                           [DOCUMENTS[user][d] for d in ids])


def test_top_m_at_least_the_document_count_equals_merge_all(stored, tiny_checkpoint, commer_cache, tmp_path):
    everything = generate(stored, tiny_checkpoint, commer_cache, tmp_path / "all", f"--profiles={stored['profiles']}")
    retrieved = generate(stored, tiny_checkpoint, commer_cache, tmp_path / "retrieved", "--merge=retrieved",
                         "--top_m=50", f"--document_compressions={stored['compressions']}",
                         f"--documents={stored['docs']}")
    assert sorted(everything) == sorted(retrieved) == ["q1", "q2", "q3", "q4"]
    for q in everything:
        a, b = everything[q], retrieved[q]
        assert (a["prediction"], a["doc_count"], a["personalized"], a["prompt_tokens"]) == \
            (b["prediction"], b["doc_count"], b["personalized"], b["prompt_tokens"])
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-5)
    assert retrieved["q1"]["doc_count"] == 4 and retrieved["q3"]["doc_count"] == 3
    assert retrieved["q4"]["personalized"] is False and retrieved["q4"]["doc_count"] == 0
    # The run summary says how the soft prompts were merged.
    merges = [json.loads((tmp_path / name / "run_summary.json").read_text())["merge"] for name in ("all", "retrieved")]
    assert merges[0] == {"merge": "all"}
    assert merges[1] == {"merge": "retrieved", "retrieval": "bm25", "top_m": 50, "queries_candidates_without_text": 0,
                         "queries_some_candidates_without_text": 0, "compressions_without_document": 0,
                         "documents_without_compression": 0, "stored_compression_duplicates": 0}


def test_candidates_without_text_are_counted_and_reported(stored, tiny_checkpoint, commer_cache, tmp_path, capsys):
    """The README's case: --documents holds one day's text, the compressions every day's. A user none of whose
    compressions has its text is answered unpersonalized: counted, and the report says why and what to do."""
    partial = tmp_path / "one_day.jsonl"
    partial.write_text("".join(json.dumps({"user_id": "user_a", "doc_id": d, "text": DOCUMENTS["user_a"][d]}) + "\n"
                               for d in ("a1", "a2")))  # user_a: 2 of 4 texts; user_b: none
    capsys.readouterr()
    answers = generate(stored, tiny_checkpoint, commer_cache, tmp_path / "p", "--merge=retrieved", "--top_m=4",
                       f"--document_compressions={stored['compressions']}", f"--documents={partial}")
    out = capsys.readouterr().out
    assert answers["q3"]["personalized"] is False and answers["q1"]["personalized"] is True
    merge = json.loads((tmp_path / "p" / "run_summary.json").read_text())["merge"]
    assert merge["queries_candidates_without_text"] == 1  # q3 (user_b)
    assert merge["queries_some_candidates_without_text"] == 2  # q1, q2 (user_a, ranked among a1 and a2)
    assert merge["compressions_without_document"] == 5
    line = next(x for x in out.splitlines() if x.startswith("merge=retrieved:"))
    assert "1 of 4 queries answered WITHOUT personalization" in line and "2 ranked only" in line
    assert "--retrieval=similarity" in line
    assert "(2 personalized, 2 not)" in out


def test_top_1_bm25_uses_exactly_the_best_documents_compression(stored, tiny, tiny_checkpoint, commer_cache,
                                                                 tmp_path):
    rows = generate(stored, tiny_checkpoint, commer_cache, tmp_path / "top1", "--merge=retrieved", "--top_m=1",
                    "--retrieval=bm25", f"--document_compressions={stored['compressions']}",
                    f"--documents={stored['docs']}")
    chosen = {}
    for q in QUERIES[:3]:
        ids, comps, texts = candidates(stored, q["user_id"])
        [best] = top_m_by_bm25(q["instruction"], texts, 1)
        chosen[q["query_id"]] = ids[best]
        row = rows[q["query_id"]]
        assert row["doc_count"] == 1 and row["personalized"]
        soft = comps[best].astype(np.float32)
        want = float(tiny.perplexity([soft], [q["instruction"]], [q["reference"]])[0])
        assert row["perplexity"] == pytest.approx(want, rel=1e-4)
        assert row["prediction"] == tiny.generate([soft], [q["instruction"]], max_new_tokens=4)[0]
        # Discriminating: another document's compression would have scored differently.
        other = comps[(best + 1) % len(ids)].astype(np.float32)
        assert row["perplexity"] != pytest.approx(
            float(tiny.perplexity([other], [q["instruction"]], [q["reference"]])[0]), rel=1e-4)
    assert chosen == {"q1": "a2", "q2": "a4", "q3": "b2"}   # the queries were written to pick these
    assert rows["q4"]["personalized"] is False


def test_similarity_needs_no_text_and_ranks_by_the_instructions_compression(stored, tiny, tiny_checkpoint,
                                                                            commer_cache, tmp_path):
    rows = generate(stored, tiny_checkpoint, commer_cache, tmp_path / "similarity", "--merge=retrieved",
                    "--top_m=2", "--retrieval=similarity", f"--document_compressions={stored['compressions']}")
    assert sorted(rows) == ["q1", "q2", "q3", "q4"]
    for q in QUERIES[:3]:
        ids, comps, _ = candidates(stored, q["user_id"])
        top = top_m_by_similarity(tiny.compress([q["instruction"]])[0], comps, 2)
        soft = comps[sorted(top)].astype(np.float64).mean(0).astype(np.float32)
        want = float(tiny.perplexity([soft], [q["instruction"]], [q["reference"]])[0])
        assert rows[q["query_id"]]["doc_count"] == 2
        assert rows[q["query_id"]]["perplexity"] == pytest.approx(want, rel=1e-4)
    assert rows["q4"]["personalized"] is False


@pytest.mark.parametrize("flags, named", [
    (["--merge=retrieved", "--top_m=2", "--documents=D"], "--document_compressions"),
    (["--merge=retrieved", "--document_compressions=C", "--documents=D"], "--top_m"),
    (["--merge=retrieved", "--top_m=0", "--document_compressions=C", "--documents=D"], "--top_m"),
    (["--merge=retrieved", "--top_m=2", "--document_compressions=C"], "--documents"),
    (["--merge=retrieved", "--top_m=2", "--retrieval=similarity", "--document_compressions=C", "--documents=D"],
     "--documents"),
    (["--merge=retrieved", "--top_m=2", "--document_compressions=C", "--mode=none"], "--mode=commer"),
    (["--top_m=2", "--profiles=P"], "--merge=retrieved"),
    (["--retrieval=similarity", "--profiles=P"], "--merge=retrieved"),
    (["--merge=retrieved", "--top_m=2", "--document_compressions=P", "--documents=D"], "document compressions"),
])
def test_flag_errors_are_one_line_naming_the_flag(flags, named, stored, tiny_checkpoint, commer_cache, tmp_path,
                                                  capsys):
    from pipelines import generate as job
    paths = {"C": stored["compressions"], "D": stored["docs"], "P": f"{stored['profiles']}/profiles"}
    flags = [f.replace("=C", f"={paths['C']}").replace("=D", f"={paths['D']}").replace("=P", f"={paths['P']}")
             for f in flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(job.main, RUNNER + [f"--queries={stored['queries']}", f"--output={tmp_path / 'out'}",
                                    f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_compressions_of_another_checkpoint_are_refused(stored, tiny_backbone, commer_cache, tmp_path, capsys):
    from commer import ComMerConfig
    from pipelines import generate as job
    other = tmp_path / "other-checkpoint"
    ComMer.from_backbone(tiny_backbone, ComMerConfig(num_compression_tokens=4, max_document_tokens=64, seed=7),
                         cache=commer_cache).save_pretrained(str(other))
    with pytest.raises(SystemExit):
        run_cli(job.main, RUNNER + [f"--queries={stored['queries']}", f"--output={tmp_path / 'out'}",
                                    f"--checkpoint={other}", f"--cache_dir={commer_cache}", "--merge=retrieved",
                                    "--top_m=1", "--retrieval=similarity",
                                    f"--document_compressions={stored['compressions']}"])
    err = capsys.readouterr().err
    assert "--document_compressions" in err and "fingerprint" in err and "Traceback" not in err


@pytest.mark.parametrize("ranking", [["--retrieval=bm25", "--documents=D"], ["--retrieval=similarity"]])
def test_retrieved_graphs_build_for_dataflow(ranking, stored, tiny_checkpoint, commer_cache, tmp_path, capsys):
    """The retrieval stages (per-user pool, instruction compressor) pickle and wire on Dataflow (offline dry run)."""
    from pipelines import generate as job
    dataflow = ["--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--project=demo", "--region=us-central1",
                "--temp_location=gs://demo/tmp"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(job.main, [f"--queries={stored['queries']}", f"--output={tmp_path / 'out'}",
                           f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}", "--merge=retrieved",
                           "--top_m=2", f"--document_compressions={stored['compressions']}",
                           *[f.replace("=D", f"={stored['docs']}") for f in ranking], *dataflow])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "job graph built for Dataflow, not submitted" in out
