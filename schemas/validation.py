"""Raw input records → valid documents or dead letters: plain Python, no Beam.

Every rejection carries a reason a data engineer can act on. Reasons and ids may reach logs
and metrics; document text never does (it only goes into the dead-letter *data* output).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from schemas.records import DeadLetter, Document

DEFAULT_MAX_RECORD_BYTES = 1 << 20
# Dead letters keep the raw record so nothing is lost, but never an unbounded copy of it.
RECORD_PREFIX_CHARS = 4096
HEX_PREFIX_BYTES = 256


@dataclass(frozen=True)
class Oversized:
    """A line a bounded reader stopped keeping once it passed the size limit: its first bytes and true size."""

    prefix: bytes = field(repr=False)
    size: int

    def strip(self) -> bytes:  # not blank: it is a record (to dead-letter)
        return b"x"


@dataclass(frozen=True)
class ValidDocument:
    """What the pipeline carries after validation: small and cheap to encode."""

    user_id: str
    doc_id: str
    # Hidden from repr: runners put element reprs into error messages and debug logs.
    text: str = field(repr=False)
    created_at: datetime | None = None


def _record_text(raw: str) -> str:
    return raw[:RECORD_PREFIX_CHARS]


def _dead(stage: str, reason: str, source: str, record: str | None,
          user_id: Any = None, doc_id: Any = None) -> DeadLetter:
    return DeadLetter(stage=stage, reason=reason, source=source, record=record,
                      user_id=user_id if isinstance(user_id, str) else None,
                      doc_id=doc_id if isinstance(doc_id, str) else None)


def decode_line(raw: bytes | str, source: str = "",
                max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> tuple[Any, str] | DeadLetter:
    """One JSONL line → (decoded JSON value, its text), or a dead letter (bad UTF-8, oversized, bad JSON)."""
    if isinstance(raw, Oversized):
        return _dead("parse", f"record is {raw.size} bytes, over --max_record_bytes={max_record_bytes}", source,
                     _record_text(raw.prefix.decode("utf-8", "replace")))
    size = len(raw)
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark starts many exported files
        except UnicodeDecodeError as exc:
            return _dead("parse", f"record is not valid UTF-8 (bad byte at offset {exc.start})", source,
                         "hex:" + raw[:HEX_PREFIX_BYTES].hex())
    else:
        text, size = raw.removeprefix("\ufeff"), len(raw.encode("utf-8", "surrogatepass"))
    if size > max_record_bytes:
        return _dead("parse", f"record is {size} bytes, over --max_record_bytes={max_record_bytes}",
                     source, _record_text(text))
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        return _dead("parse", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
                     source, _record_text(text))
    except RecursionError:
        return _dead("parse", "malformed JSON: too deeply nested", source, _record_text(text))
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        return _dead("parse", f"JSON value Python cannot hold ({_first_words(exc)})", source, _record_text(text))


def _first_words(exc: BaseException) -> str:
    """An exception's message without values (its text before the first colon), for a dead letter's reason."""
    return f"{type(exc).__name__}: {str(exc).split(':', 1)[0][:80]}"


def undecodable(raw: Any, source: str, exc: BaseException, stage: str = "parse") -> DeadLetter:
    """The dead letter of a record that broke a decoder in a way no rule above foresaw (any ValueError,
    RecursionError or OverflowError): nothing a record holds may take a job down."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else (
        raw if isinstance(raw, str) else _safe_json(raw))
    return _dead(stage, f"record cannot be decoded ({_first_words(exc)})", source,
                 _record_text(text) if text else None, *_ids(raw))


def row_dead_letter(row_table, source: str, exc: BaseException) -> DeadLetter:
    """A Parquet row Python cannot hold (e.g. a timestamp beyond year 9999): named by the column at fault."""
    bad = []
    for name in row_table.column_names:
        try:
            row_table.column(name).to_pylist()
        except (ValueError, OverflowError):
            bad.append(name)
    where = f"column {', '.join(repr(b) for b in bad)}" if bad else "a column"
    return _dead("parse", f"{where} holds a value Python cannot represent ({_first_words(exc)})", source, None)


def parse_record(raw: Any, record_type: type[BaseModel], source: str = "",
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> BaseModel | DeadLetter:
    """The one rule every job applies: a JSONL line (bytes | str) or a decoded row (dict) → a
    validated `record_type`, or a dead letter with a reason (never raises, never quotes values)."""
    try:
        return _parse_record(raw, record_type, source, max_record_bytes)
    except (ValueError, RecursionError, OverflowError) as exc:
        return undecodable(raw, source, exc)


def _parse_record(raw: Any, record_type: type[BaseModel], source: str, max_record_bytes: int) -> BaseModel | DeadLetter:
    raw_text = None
    if isinstance(raw, (bytes, str)):
        decoded = decode_line(raw, source, max_record_bytes)
        if isinstance(decoded, DeadLetter):
            return decoded
        raw, raw_text = decoded
    else:
        raw_text = _safe_json(raw)
        if raw_text is not None and len(raw_text.encode("utf-8", "surrogatepass")) > max_record_bytes:
            return _dead("parse", f"record is over --max_record_bytes={max_record_bytes}", source,
                         _record_text(raw_text), *_ids(raw))
    return _validate(raw, record_type, source, raw_text)


def _validate(row: Any, record_type: type[BaseModel], source: str, raw: str | None) -> BaseModel | DeadLetter:
    if not isinstance(row, dict):
        return _dead("validate", f"record is a JSON {type(row).__name__}, not an object", source,
                     _record_text(raw) if raw else None)
    if (bad := invalid_unicode(row)) is not None:
        # Never into a DoFn that can raise: the tokenizer (and UTF-8 writers) refuse lone surrogates.
        return _dead("validate", bad, source, _record_text(raw) if raw else None, *_ids(row))
    try:
        return record_type.model_validate(row)
    except ValidationError as exc:
        return _dead("validate", describe_errors(exc), source, _record_text(raw) if raw else None, *_ids(row))


def parse_json_line(raw: bytes | str, source: str = "",
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> ValidDocument | DeadLetter:
    """One JSONL line → a document or a dead letter (never raises)."""
    decoded = decode_line(raw, source, max_record_bytes)
    if isinstance(decoded, DeadLetter):
        return decoded
    row, text = decoded
    return validate_row(row, source, text)


def validate_row(row: Any, source: str = "", raw: str | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> ValidDocument | DeadLetter:
    """A decoded record (JSON object or Parquet row) → a document or a dead letter (never raises)."""
    try:
        return _validate_row(row, source, raw, max_record_bytes)
    except (ValueError, RecursionError, OverflowError) as exc:
        return undecodable(raw if raw is not None else row, source, exc, "validate")


def _validate_row(row: Any, source: str, raw: str | None, max_record_bytes: int) -> ValidDocument | DeadLetter:
    if raw is None:
        raw = _safe_json(row)
        if raw is not None and len(raw.encode("utf-8", "surrogatepass")) > max_record_bytes:
            return _dead("parse", f"record is over --max_record_bytes={max_record_bytes}", source,
                         _record_text(raw), *_ids(row))
    user_id, doc_id = _ids(row)
    if isinstance(row, dict) and isinstance(text := row.get("text"), (bytes, bytearray)):
        # Parquet binary columns: the only place undecodable text can reach validation.
        try:
            row = {**row, "text": bytes(text).decode("utf-8")}
        except UnicodeDecodeError as exc:
            return _dead("validate", f"field 'text' is not valid UTF-8 (bad byte at offset {exc.start})",
                         source, None, user_id, doc_id)
    doc = _validate(row, Document, source, raw)
    if isinstance(doc, DeadLetter):
        return doc
    return ValidDocument(doc.user_id, doc.doc_id, doc.text, doc.created_at)


def invalid_unicode(value: Any, where: str = "") -> str | None:
    """A reason naming the first field whose text UTF-8 cannot encode (lone surrogates), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"field '{where or 'record'}' holds invalid Unicode (lone surrogate at character {exc.start}); "
                    "the tokenizer cannot take it")
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and (bad := invalid_unicode(key, where)) is not None:
            return bad
        if (bad := invalid_unicode(item, f"{where}.{key}" if where else str(key))) is not None:
            return bad
    return None


def dead_letter_json(letter: DeadLetter) -> str:
    """A dead letter as one JSON line; never fails on content (DeadLetter escapes invalid Unicode, and
    a letter built around validation still comes out as ASCII-escaped JSON)."""
    try:
        return letter.model_dump_json()
    except Exception:  # model_construct'ed or mutated letters: fall back to ASCII JSON, which holds anything
        return json.dumps({**letter.model_dump(mode="python"), "escaped": True}, ensure_ascii=True, default=str)


def _ids(row: Any) -> tuple[Any, Any]:
    if not isinstance(row, dict):
        return None, None
    return row.get("user_id"), row.get("doc_id")


def _safe_json(row: Any) -> str | None:
    try:
        return json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError, OverflowError):
        return None


def describe_errors(exc: ValidationError) -> str:
    """Field names and what is wrong, never the offending values (they may be text)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(x) for x in err["loc"]) or "record"
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


def text_key(text: str) -> str:
    """Stable tie-breaker among duplicates: depends on content only, never on order or sharding."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def pick_one(documents: Iterable[ValidDocument]) -> tuple[ValidDocument | None, list[ValidDocument]]:
    """Among records sharing (user_id, doc_id): the one to keep and the duplicates.

    The kept one is the smallest by content hash, so every run, sharding and order keeps the same.
    """
    # created_at breaks ties between same-text records: recency weights depend on it.
    docs = sorted(documents, key=lambda d: (text_key(d.text), d.created_at is not None,
                                            d.created_at.isoformat() if d.created_at else ""))
    return (docs[0] if docs else None), docs[1:]


def duplicate_letter(doc: ValidDocument, source: str = "") -> DeadLetter:
    return DeadLetter(stage="duplicate", reason="duplicate doc_id within user; another record with this "
                      "(user_id, doc_id) was kept", source=source, user_id=doc.user_id, doc_id=doc.doc_id,
                      record=_record_text(json.dumps({"user_id": doc.user_id, "doc_id": doc.doc_id,
                                                      "text": doc.text}, ensure_ascii=False)))


def parse_deletion(row: Any, source: str = "") -> tuple[str, str] | DeadLetter:
    """A deletion request {user_id, doc_id} → the key, normalised as document ids are (surrounding whitespace
    stripped), or a dead letter (never raises)."""
    try:
        return _parse_deletion(row, source)
    except (ValueError, RecursionError, OverflowError) as exc:
        return undecodable(row, source, exc, "deletion")


def _parse_deletion(row: Any, source: str) -> tuple[str, str] | DeadLetter:
    if isinstance(row, Oversized) or isinstance(row, (bytes, str)):
        decoded = decode_line(row, source)
        if isinstance(decoded, DeadLetter):
            return decoded.model_copy(update={"stage": "deletion", "reason": f"--deletions: {decoded.reason}"})
        row = decoded[0]
    user_id, doc_id = _ids(row)
    user_id, doc_id = (x.strip() if isinstance(x, str) else x for x in (user_id, doc_id))
    if not (isinstance(user_id, str) and user_id and isinstance(doc_id, str) and doc_id) or invalid_unicode(row):
        return _dead("deletion", "deletion needs non-empty string fields 'user_id' and 'doc_id'", source,
                     _safe_json(row), user_id, doc_id)
    return user_id, doc_id
