"""Task loaders on small fixtures written in the published formats (LaMP, PerLTQA, HuffPost, WikiText)."""
import json
from pathlib import Path

import pytest

from training.tasks import DataError, MAX_EXAMPLE_CHARS, bm25_top, split_of
from training.tasks import lamp, news, perltqa, pretraining, reads_task_prompt

F = Path(__file__).parent / "fixtures" / "training"


def test_bm25_top_n_order_best_first():
    # Six entries: with rank-bm25's IDF a term in half of a tiny corpus would score ~0.
    corpus = ["cats and dogs", "bike lanes parks council", "parks", "nothing related here", "weather", "sports news"]
    assert bm25_top("council parks bike lanes", corpus, 2) == [1, 2]
    assert bm25_top("anything", corpus, 0) == []
    assert len(bm25_top("parks", corpus, 10)) == len(corpus)


def test_lamp4_query_corpus_rules_and_top_n():
    examples = lamp.load_file("lamp4", F / "lamp4_questions.json", F / "lamp4_outputs.json", 2)
    first = examples[0]
    assert first.user_id == "400" and first.answer == "Council Passes Budget For Parks And Bike Lanes"
    assert len(first.documents) == 2
    # Both council/parks items beat the unrelated ones; documents are formatted "Text: ... Title: ...".
    assert first.documents[0] == "Text: The city council debated bike lanes and parks funding. Title: Council Debates Bike Lanes"
    assert first.documents[1].endswith("Title: Parks Budget Grows")
    assert lamp.query_of("lamp4", "Generate a headline for the following article: Hello world") == "Hello world"
    # Users with fewer items than n get all of them.
    assert len(examples[1].documents) == 2 and examples[1].documents[0].startswith("Text: Biologists")


def test_lamp_excludes_examples_over_2900_chars():
    examples = lamp.load_file("lamp4", F / "lamp4_questions.json", F / "lamp4_outputs.json", 4)
    ids = {e.user_id for e in examples}
    assert "402" not in ids and len(ids) == 5
    assert all(e.num_chars() <= MAX_EXAMPLE_CHARS for e in examples)


def test_lamp7_query_after_first_colon():
    assert lamp.query_of("lamp7", "Paraphrase the following tweet: a: b") == "a: b"
    examples = lamp.load_file("lamp7", F / "lamp7_questions.json", F / "lamp7_outputs.json", 1)
    assert examples[0].documents == ["new music on my phone is the best"]
    assert examples[1].documents == ["lovely weather today, going outside"]


def test_lamp_splits_disjoint_by_user():
    q, o = F / "lamp4_questions.json", F / "lamp4_outputs.json"
    splits = {s: {e.user_id for e in lamp.load("lamp4", q, o, s, 2)} for s in ("train", "val")}
    assert not splits["train"] & splits["val"]
    assert splits["train"] | splits["val"] == {"400", "401", "403", "404", "405"}
    # A separate dev file pair is the test split, whole.
    test = lamp.load("lamp7", F / "lamp7_questions.json", F / "lamp7_outputs.json", "test", 2,
                     test_questions=F / "lamp7_questions.json", test_outputs=F / "lamp7_outputs.json")
    assert {e.user_id for e in test} == {"700", "701"}


def test_lamp_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="nope.json.*not found"):
        lamp.load_file("lamp4", tmp_path / "nope.json", F / "lamp4_outputs.json", 2)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*not valid JSON"):
        lamp.load_file("lamp4", bad, F / "lamp4_outputs.json", 2)
    missing = tmp_path / "q.json"
    missing.write_text(json.dumps([{"id": "400", "input": "x"}]))
    with pytest.raises(DataError, match=r"q.json.*question 0.*\['profile'\]"):
        lamp.load_file("lamp4", missing, F / "lamp4_outputs.json", 2)
    no_title = tmp_path / "q2.json"
    no_title.write_text(json.dumps([{"id": "400", "input": "x", "profile": [{"id": "1", "text": "t"}]}]))
    with pytest.raises(DataError, match=r"profile item 0.*\['title'\]"):
        lamp.load_file("lamp4", no_title, F / "lamp4_outputs.json", 2)
    outputs = tmp_path / "o.json"
    outputs.write_text(json.dumps({"task": "LaMP_4", "golds": []}))
    with pytest.raises(DataError, match="no gold output for question id 400"):
        lamp.load_file("lamp4", F / "lamp4_questions.json", outputs, 2)


def test_perltqa_subsets_contain_reference_and_split_by_persona():
    per_split = {s: perltqa.load(F / "perltmem_en.json", F / "perltqa_en.json", s, 3, seed=1)
                 for s in ("train", "val", "test")}
    users = {s: {e.user_id for e in ex} for s, ex in per_split.items()}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]
    assert sum(len(u) for u in users.values()) == 12
    memories = json.loads((F / "perltmem_en.json").read_text())
    for ex in per_split["train"]:
        assert len(ex.documents) == 3 and len(set(ex.documents)) == 3
        known = perltqa.persona_memories(ex.user_id, memories[ex.user_id], "m")
        for ref in ex.meta["reference"]:
            assert known[ref] in ex.documents
    kinds = {e.instruction.split()[0] for e in per_split["train"]}
    assert kinds == {"How", "Who", "What"}  # profile, relationship and event questions all present


def test_perltqa_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json.*not found"):
        perltqa.load(tmp_path / "missing.json", F / "perltqa_en.json", "train", 2)
    bad = tmp_path / "mem.json"
    bad.write_text(json.dumps({"Persona A": {"profile": {}}}))
    with pytest.raises(DataError, match=r"mem.json.*Persona A.*social_relationship"):
        perltqa.load(bad, F / "perltqa_en.json", split_of("Persona A", perltqa.FRACTIONS), 2)


def test_news_author_split_fixed_and_disjoint():
    splits = {s: news.load(F / "news.jsonl", s, 3) for s in ("train", "val", "test")}
    authors = {s: {e.user_id for e in ex} for s, ex in splits.items()}
    assert not authors["train"] & authors["val"] and not authors["train"] & authors["test"]
    assert not authors["val"] & authors["test"]
    # Every author with 2+ articles is somewhere; no-author rows and single-article authors are not.
    assert set().union(*authors.values()) == {f"Author {a}" for a in range(30)}
    for s, names in authors.items():
        assert all(split_of(a, news.FRACTIONS) == s for a in names)
    ex = splits["train"][0]
    assert ex.instruction.startswith("Generate a headline for the following article: Author")
    # The no-documents prompt-tuning baseline trains on the same examples, without documents.
    bare = news.load(F / "news.jsonl", "train", 0)
    assert [e.example_id for e in bare] == [e.example_id for e in splits["train"]]
    assert all(e.documents == [] for e in bare)
    assert len(ex.documents) == 3 and all(d.startswith("Text: ") and " Title: " in d for d in ex.documents)
    # The query's own article is never among its documents.
    assert all(e.answer not in " ".join(e.documents) for e in splits["train"])


def test_news_bm25_picks_matching_articles(tmp_path):
    rows = [
        {"headline": "Target", "short_description": "zebra giraffe savanna", "authors": "A"},
        {"headline": "Match", "short_description": "giraffe savanna safari", "authors": "A"},
        {"headline": "Other", "short_description": "stock market rally", "authors": "A"},
        {"headline": "Other2", "short_description": "election night", "authors": "A"},
    ]
    path = tmp_path / "n.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    split = split_of("A", news.FRACTIONS)
    examples = news.load(str(path), split, 1)
    target = next(e for e in examples if e.answer == "Target")
    assert target.documents == ["Text: giraffe savanna safari Title: Match"]


def test_news_caps_are_seeded():
    a = news.load(F / "news.jsonl", "train", 2, seed=3, max_examples=10, max_examples_per_user=2)
    b = news.load(F / "news.jsonl", "train", 2, seed=3, max_examples=10, max_examples_per_user=2)
    assert [e.example_id for e in a] == [e.example_id for e in b] and len(a) == 10
    per_user = {}
    for e in a:
        per_user[e.user_id] = per_user.get(e.user_id, 0) + 1
    assert max(per_user.values()) <= 2


def test_news_malformed(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"headline": "h", "short_description": "d", "authors": "A"}\n{oops\n')
    with pytest.raises(DataError, match="n.jsonl: line 2"):
        news.load(str(path), "train", 2)
    path.write_text('{"headline": "h", "authors": "A"}\n')
    with pytest.raises(DataError, match=r"n.jsonl: record 1.*short_description"):
        news.load(str(path), "train", 2)


def test_wikitext_detokenized_headings_and_unk_skipped():
    paragraphs = pretraining.read_corpus(F / "wikitext_sample.txt")
    assert not any(p.startswith("=") for p in paragraphs)
    assert "red-tipped" in paragraphs[1] and "3.1" in paragraphs[1] and "1,000" in paragraphs[1]
    assert "gammarus, known" in paragraphs[0] and " ," not in paragraphs[0]
    docs = pretraining.corpus_documents([str(F / "wikitext_sample.txt")])
    assert docs and all(len(d) <= 150 for d in docs) and not any("<unk>" in d for d in docs)


def test_pretraining_examples_shape(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Text number {i} " + "word " * 40}) for i in range(20)))
    examples = pretraining.make_examples(pretraining.corpus_documents([str(corpus)]), 3, seed=0)
    assert examples
    for ex in examples:
        assert [d.split(":")[0] for d in ex.documents] == ["Document 1", "Document 2", "Document 3"]
        n = int(ex.instruction.split()[-2])
        assert ex.instruction == f"What does document {n} contain?"
        assert ex.documents[n - 1] == f"Document {n}: {ex.answer}" and len(ex.answer) <= 150
    # Reconstruction examples: never read after a checkpoint's own task prompt.
    assert reads_task_prompt(examples) == [False] * len(examples)


def test_pretraining_parquet_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["alpha " * 30, "beta " * 30], "id": [1, 2]}), tmp_path / "fw.parquet")
    assert len(pretraining.read_corpus(str(tmp_path / "fw.parquet"))) == 2
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet.*'text' column"):
        pretraining.read_corpus(str(tmp_path / "bad.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl: record 1.*'text'"):
        pretraining.read_corpus(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="absent.txt.*not found"):
        pretraining.read_corpus(str(tmp_path / "absent.txt"))
