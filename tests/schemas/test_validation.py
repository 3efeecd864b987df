"""Raw records → documents or dead letters (schemas.validation): no Beam, no model."""
import json
from datetime import datetime, timezone

import pytest

from schemas.validation import (ValidDocument, duplicate_letter, parse_deletion, parse_json_line, pick_one,
                                  validate_row)
from schemas import DeadLetter

SECRET = "my very private diary entry"


def line(**row) -> bytes:
    return json.dumps(row).encode()


def test_valid_line_becomes_a_document():
    doc = parse_json_line(line(user_id="u1", doc_id="d1", text="hello there", created_at="2026-01-01T00:00:00Z"))
    # created_at is kept: recency-weighted profiles (--half_life_days) weigh the document by it.
    assert doc == ValidDocument("u1", "d1", "hello there", datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize("raw, stage, words", [
    (b'{"user_id": "u1", "doc_id": "d1", "text": ', "parse", "malformed JSON"),
    (b'["u1", "d1", "text"]', "validate", "not an object"),
    (line(doc_id="d1", text=SECRET), "validate", "user_id"),
    (line(user_id="u1", text=SECRET), "validate", "doc_id"),
    (line(user_id="u1", doc_id="d1"), "validate", "text"),
    (line(user_id=7, doc_id="d1", text=SECRET), "validate", "user_id"),
    (line(user_id="u1", doc_id="d1", text=["a", "b"]), "validate", "text"),
    (line(user_id="u1", doc_id="d1", text="   \n "), "validate", "empty"),
    (line(user_id="", doc_id="d1", text=SECRET), "validate", "user_id"),
    (b'{"user_id": "u1", "doc_id": "d1", "text": "caf\xe9"}', "parse", "UTF-8"),
])
def test_bad_lines_become_dead_letters_with_a_reason(raw, stage, words):
    result = parse_json_line(raw, source="in.jsonl")
    assert isinstance(result, DeadLetter)
    assert result.stage == stage and words in result.reason and result.source == "in.jsonl"
    assert SECRET not in result.reason  # reasons may be logged; text never


def test_ids_kept_when_readable_and_undecodable_bytes_kept_as_hex():
    bad = parse_json_line(line(user_id="u1", doc_id="d1", text=""))
    assert (bad.user_id, bad.doc_id) == ("u1", "d1")
    raw = b'{"user_id": "u1", "text": "\xff\xfe"}'
    letter = parse_json_line(raw)
    assert letter.record == "hex:" + raw.hex()


def test_oversized_record():
    raw = line(user_id="u1", doc_id="d1", text="x" * 500)
    letter = parse_json_line(raw, max_record_bytes=100)
    assert isinstance(letter, DeadLetter) and "--max_record_bytes=100" in letter.reason
    assert isinstance(parse_json_line(raw, max_record_bytes=10_000), ValidDocument)


def test_parquet_rows_including_binary_text():
    assert validate_row({"user_id": "u", "doc_id": "d", "text": b"ok bytes"}) == ValidDocument("u", "d", "ok bytes")
    letter = validate_row({"user_id": "u", "doc_id": "d", "text": b"\xff\xfe"})
    assert isinstance(letter, DeadLetter) and "UTF-8" in letter.reason
    letter = validate_row({"user_id": "u", "doc_id": "d", "text": None})
    assert isinstance(letter, DeadLetter) and "text" in letter.reason


def test_duplicates_keep_the_same_record_in_any_order():
    docs = [ValidDocument("u", "d", t) for t in ("alpha", "beta", "gamma")]
    # Same text, other dates: the date decides too (a recency weight depends on it).
    docs += [ValidDocument("u", "d", "alpha", datetime(2026, 1, day, tzinfo=timezone.utc)) for day in (2, 1)]
    kept = {pick_one(order)[0] for order in (docs, docs[::-1], docs[1:] + docs[:1], docs[3:] + docs[:3])}
    assert len(kept) == 1
    kept_one, dups = pick_one(docs)
    assert len(dups) == 4 and kept_one not in dups
    letter = duplicate_letter(dups[0])
    assert letter.stage == "duplicate" and letter.reason and SECRET not in letter.reason


def test_deletions():
    assert parse_deletion(b'{"user_id": "u", "doc_id": "d"}') == ("u", "d")
    assert parse_deletion({"user_id": "u", "doc_id": "d"}) == ("u", "d")
    assert isinstance(parse_deletion(b"{oops"), DeadLetter)
    assert isinstance(parse_deletion({"user_id": "u"}), DeadLetter)


# ---- issue 15: nothing a record carries can take a run down ------------------------------

SURROGATE_LINES = [
    (b'{"user_id": "s", "doc_id": "1", "text": "x\\ud800y"}', "text", "s", "1"),
    (b'{"user_id": "u\\udc80", "doc_id": "1", "text": "fine"}', "user_id", None, "1"),
    (b'{"user_id": "u", "doc_id": "\\ud800", "text": "fine"}', "doc_id", "u", None),
]


@pytest.mark.parametrize("raw, field, user_id, doc_id", SURROGATE_LINES)
def test_invalid_unicode_is_dead_lettered_naming_the_record(raw, field, user_id, doc_id):
    letter = parse_json_line(raw, source="in.jsonl")
    assert isinstance(letter, DeadLetter) and letter.stage == "validate"
    assert f"field '{field}'" in letter.reason and "invalid Unicode" in letter.reason
    if user_id:
        assert letter.user_id == user_id
    if doc_id:
        assert letter.doc_id == doc_id
    json.loads(letter.model_dump_json())  # writing it can never fail


def test_dead_letters_escape_what_json_cannot_hold_and_say_so():
    letter = DeadLetter(stage="s", reason="r", user_id="a\ud800", doc_id="\udfff", record='{"text": "x\ud800"}')
    back = json.loads(letter.model_dump_json())
    assert back["user_id"] == "a\\ud800" and back["doc_id"] == "\\udfff" and back["escaped"] is True
    assert "escaped" in back["reason"]
    assert json.loads(DeadLetter(stage="s", reason="r", user_id="ok").model_dump_json())["escaped"] is False


def test_bom_is_accepted_and_ids_are_stripped_then_required():
    assert parse_json_line(b"\xef\xbb\xbf" + line(user_id="u", doc_id="d", text="t")) == ValidDocument("u", "d", "t")
    assert parse_json_line(line(user_id=" u ", doc_id="\td\n", text="t")) == ValidDocument("u", "d", "t")
    for ids in ({"user_id": "   ", "doc_id": "d"}, {"user_id": "u", "doc_id": " \t"}):
        letter = parse_json_line(line(text="t", **ids))
        assert isinstance(letter, DeadLetter) and letter.stage == "validate"
    assert parse_deletion(line(user_id=" u", doc_id="d ")) == ("u", "d")
    assert isinstance(parse_deletion(line(user_id=" ", doc_id="d")), DeadLetter)


@pytest.mark.parametrize("raw", [b'{"user_id": "u", "doc_id": "d", "text": "a\x01b"}', b'{"user_id": "u",, }',
                                 b'{"user_id": "u"', b'\n\n{"a": 1} x'])
def test_malformed_json_reasons_are_whole_with_line_and_column(raw):
    letter = parse_json_line(raw)
    assert isinstance(letter, DeadLetter) and letter.stage == "parse"
    assert "line" in letter.reason and "column" in letter.reason, letter.reason
    assert not letter.reason.rstrip().endswith(" at"), letter.reason
