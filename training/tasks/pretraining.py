"""Multi-document auto-encoding (paper 4.1.3): reconstruct document n from the merged compressions.

Each example groups `num_documents` short documents (cut to 150 characters), the i-th prefixed
"Document i: ", asks "What does document n contain?" for a random n, and expects that
document's text. Corpora: JSONL or Parquet with a `text` column (FineWeb works as is), or plain
text (one paragraph per line). WikiText's tokenized form is detected and detokenized.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from training.tasks.base import AUTOENCODING, DataError, Example, drop_long, read_jsonl, require_file, split_of

DOC_CHARS = 150
_WIKI_HEADING = re.compile(r"^\s*=( =)* .* (= )*=\s*$")
_WIKI_JOINERS = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")]
_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]}'’”]|n't|'s|'re|'ve|'m|'ll|'d)(?=\s|$)")
_SPACE_AFTER = re.compile(r"([(\[{]) ")


def detokenize_wikitext(line: str) -> str:
    """Undo WikiText's tokenization: ' @-@ ' → '-', spaces before punctuation, etc."""
    for a, b in _WIKI_JOINERS:
        line = line.replace(a, b)
    line = _SPACE_BEFORE.sub(r"\1", line.strip())
    line = _SPACE_AFTER.sub(r"\1", line)
    line = re.sub(r'" (.*?) "', r'"\1"', line)
    return line


def chunk_text(text: str, size: int = DOC_CHARS, min_size: int = 40) -> list[str]:
    """Consecutive pieces of at most `size` characters, cut at word boundaries."""
    words, chunks, current = text.split(), [], ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if len(candidate) > size and current:
            chunks.append(current)
            current = word
        else:
            current = candidate
    if current:
        chunks.append(current)
    return [c[:size] for c in chunks if len(c) >= min_size]


def read_corpus(path: str) -> list[str]:
    """Paragraph texts of a corpus file (.jsonl/.json lines, .parquet, or plain text)."""
    p = require_file(path, "pretraining corpus")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = read_jsonl(p, "pretraining corpus")
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str)]
        if bad:
            raise DataError(f"{p}: record {bad[0]} of the pretraining corpus has no string 'text' field")
        return [r["text"] for r in rows]
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(p, columns=["text"])
        except Exception as exc:  # pyarrow raises several types for bad files / missing columns
            raise DataError(f"{p}: cannot read a 'text' column from this Parquet file ({exc.__class__.__name__})") from None
        return [t for t in table.column("text").to_pylist() if isinstance(t, str)]
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{p}: pretraining corpus is not UTF-8 text") from None
    wikitext = any(" @-@ " in l or " @,@ " in l or "<unk>" in l for l in lines[:2000])
    out = []
    for line in lines:
        if not line.strip():
            continue
        if wikitext:
            if _WIKI_HEADING.match(line):
                continue
            line = detokenize_wikitext(line)
        out.append(line.strip())
    return out


def corpus_documents(paths: list[str], size: int = DOC_CHARS) -> list[str]:
    """All ≤150-character documents of the corpora; pieces with WikiText's <unk> are skipped
    (the model should not learn to reproduce an artefact of the corpus)."""
    docs = []
    for path in paths:
        for paragraph in read_corpus(path):
            docs.extend(c for c in chunk_text(paragraph, size) if "<unk>" not in c)
    if not docs:
        raise DataError(f"{', '.join(paths)}: no usable text found in the pretraining corpus")
    return docs


def make_examples(docs: list[str], num_documents: int, seed: int, prefix: str = "",
                  passes: int = 1) -> list[Example]:
    """Group documents into examples of `num_documents`; the asked-for index n is random.

    Each pass regroups all documents in a new random order, so a small corpus yields more
    distinct examples."""
    rng = random.Random(seed)
    order = []
    for _ in range(passes):
        shuffled = list(range(len(docs)))
        rng.shuffle(shuffled)
        order.extend(shuffled[: len(shuffled) - len(shuffled) % num_documents])
    examples = []
    for start in range(0, len(order) - num_documents + 1, num_documents):
        group = [docs[i] for i in order[start: start + num_documents]]
        n = rng.randrange(len(group))
        examples.append(Example(
            documents=[f"Document {i + 1}: {d}" for i, d in enumerate(group)],
            instruction=f"What does document {n + 1} contain?",
            answer=group[n],
            user_id=f"{prefix}group{start // num_documents}",
            example_id=f"{prefix}{start // num_documents}",
            meta={AUTOENCODING: True},
        ))
    return drop_long(examples)


def load(data: list[str], split: str, num_documents: int, seed: int, val_data: list[str] | None = None,
         fractions=(0.95, 0.05, 0.0), passes: int = 1) -> list[Example]:
    """Examples for a split. With `val_data`, 'val'/'test' come from it; otherwise documents are
    assigned to splits by a hash of their text (so a piece never appears in two splits)."""
    if split != "train" and val_data:
        docs = corpus_documents(val_data)
    else:
        docs = corpus_documents(data)
        if not (split == "train" and val_data):
            docs = [d for d in docs if split_of(d, fractions) == split]
    return make_examples(docs, num_documents, seed + {"train": 0, "val": 1, "test": 2}[split], prefix=f"{split}-",
                         passes=passes if split == "train" else 1)
