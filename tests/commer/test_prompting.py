"""commer.prompting: BM25 retrieval (LaMP's whitespace tokens) and the in-prompt layout."""
from commer.prompting import UserDocuments, bm25_top, fit_documents, in_prompt_instruction

USER_A = {"a1": "The city council voted on the new bicycle lanes downtown.",
          "a2": "Local bakery wins award for its sourdough bread.",
          "a3": "Bicycle commuters welcome the council decision on lanes."}


def test_in_prompt_bm25_picks_matching_documents():
    docs = UserDocuments([{"doc_id": d, "text": t} for d, t in USER_A.items()])
    assert set(docs.top("bicycle lanes council", 2)) == {USER_A["a1"], USER_A["a3"]}
    assert docs.top("sourdough bread", 1) == [USER_A["a2"]]
    assert UserDocuments([]).top("anything", 3) == []
    # A repeated doc_id counts once.
    twice = UserDocuments([{"doc_id": "x", "text": "alpha"}, {"doc_id": "x", "text": "alpha"}])
    assert twice.top("alpha", 5) == ["alpha"]
    # Whole documents are dropped, lowest-ranked first, until the prompt fits.
    ranked = ["one two three", "four five six", "seven eight nine"]
    # "Document 1: one two three" is 5 words: two documents + "task" = 11.
    text, used = fit_documents(ranked, "task", lambda t: len(t.split()), max_tokens=11)
    assert used == 2 and text == in_prompt_instruction(ranked[:2], "task")


def test_user_documents_rank_as_bm25_top_with_ties_by_doc_id():
    """One rule: UserDocuments ranks exactly as bm25_top over the texts in doc_id order."""
    docs = {"d2": "alpha beta", "d1": "alpha beta", "d3": "gamma"}
    indexed = UserDocuments([{"doc_id": k, "text": v} for k, v in docs.items()])
    texts = [docs[k] for k in sorted(docs)]
    for query in ("alpha", "gamma", "beta gamma", "nothing"):
        assert indexed.top(query, 3) == [texts[i] for i in bm25_top(query, texts, 3)]


def test_bm25_tokens_are_lamps_whitespace_split():
    """LaMP splits on whitespace and keeps case: 'Bicycle' and 'lanes.' are not 'bicycle'/'lanes'."""
    corpus = ["Bicycle lanes.", "bicycle lanes", "other words", "more text"]
    assert bm25_top("bicycle lanes", corpus, 1) == [1]
