"""JSONL input read with a bounded line reader: a line's size limit applies while it is being read.

Beam's text source grows and re-searches its buffer for a very long line (a single 60 MB line took
108 s: quadratic), and --max_record_bytes was checked only once the whole line sat in memory. Here
each file is cut into byte ranges (so large files still read in parallel), and every range is read
in fixed-size chunks with one linear scan for newlines. A line over the limit is never assembled:
its first bytes are kept for the dead letter, the rest is counted and skipped, and an `Oversized`
marker goes to the parser, which dead-letters it with its true size.

A range [start, end) owns the lines that *start* inside it (the usual rule for splitting text files):
a reader starting at start > 0 skips up to the first newline at or after start - 1. Compressed files
(gzip, bzip2, xz, by extension) are not splittable and are one range; they are decompressed by Python's
own readers, which notice a truncated or corrupt stream (Beam's gzip reader ends a truncated file
silently, as if it were complete): such a file stops the job with one line (InputError) naming the file
and how many lines were read, never a half read that reconciles.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from contextlib import contextmanager

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.runtime import InputError
from schemas.validation import HEX_PREFIX_BYTES, RECORD_PREFIX_CHARS, Oversized

CHUNK_BYTES = 1 << 20
RANGE_BYTES = 64 << 20
KEEP_BYTES = max(4 * RECORD_PREFIX_CHARS, HEX_PREFIX_BYTES)  # what an oversized line keeps for its dead letter


def file_ranges(path: str, range_bytes: int = RANGE_BYTES):
    """(path, start, end) ranges covering a file; one range (end None) for compressed files."""
    if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
        yield path, 0, None
        return
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    for start in range(0, max(size, 1), range_bytes):
        yield path, start, start + range_bytes


_DECOMPRESS = {CompressionTypes.GZIP: gzip.GzipFile, CompressionTypes.BZIP2: bz2.BZ2File,
               CompressionTypes.LZMA: lzma.LZMAFile}
_BROKEN = (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)


@contextmanager
def open_lines(path: str):
    """A file to read lines from: decompressed by Python's readers (which raise on a truncated or corrupt
    stream) for the types they know, by Beam's for the others."""
    kind = CompressionTypes.detect_compression_type(path)
    if kind not in _DECOMPRESS:
        with FileSystems.open(path) as f:
            yield f
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        with _DECOMPRESS[kind](fileobj=raw) if kind == CompressionTypes.GZIP else _DECOMPRESS[kind](raw) as f:
            yield f


def read_lines(path: str, start: int, end: int | None, max_line_bytes: int, chunk_bytes: int = CHUNK_BYTES,
               flag: str = "--input"):
    """(path, line bytes | Oversized) for the lines starting in [start, end); linear in the bytes read:
    each byte is searched once, and only an unfinished line (at most max_line_bytes) is ever copied.
    A compressed file that ends early or does not decompress raises InputError (one line)."""
    lines = 0
    try:
        for item in _read_lines(path, start, end, max_line_bytes, chunk_bytes):
            lines += 1
            yield item
    except _BROKEN as exc:
        if end is not None:
            raise
        raise InputError(f"{flag} {path}: the compressed file is truncated or corrupt after {lines} lines "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); nothing of it is used: "
                         "replace the file and rerun") from None


def _read_lines(path: str, start: int, end: int | None, max_line_bytes: int, chunk_bytes: int):
    with open_lines(path) as f:
        base, buf, pos, searched = 0, b"", 0, 0  # file offset of buf[0]; line start and scan point in buf
        if start > 0:  # skip the tail of the line the previous range owns
            f.seek(start - 1)
            base = start - 1
            while True:
                buf = f.read(chunk_bytes)
                if not buf:
                    return
                cut = buf.find(b"\n")
                if cut >= 0:
                    pos = searched = cut + 1
                    break
                base += len(buf)
        while True:
            if end is not None and base + pos >= end:
                return  # the next line starts in the next range
            cut = buf.find(b"\n", searched)
            if cut >= 0:
                yield path, _line(buf[pos:cut], max_line_bytes)
                pos = searched = cut + 1
                continue
            if len(buf) - pos > max_line_bytes + 1:  # over the limit (+1: a CR): count the rest, keep nothing
                kept, size = buf[pos:pos + KEEP_BYTES], len(buf) - pos
                while True:
                    chunk = f.read(chunk_bytes)
                    cut = chunk.find(b"\n") if chunk else -1
                    if cut >= 0 or not chunk:
                        size += cut if chunk else 0
                        yield path, Oversized(kept, size)
                        break
                    size += len(chunk)
                if not chunk:
                    return
                line_start = base + pos
                base, buf, pos, searched = line_start + size + 1, chunk[cut + 1:], 0, 0
                continue
            chunk = f.read(chunk_bytes)
            if not chunk:
                if pos < len(buf):  # the last line, without a newline
                    yield path, _line(buf[pos:], max_line_bytes)
                return
            base, buf, searched, pos = base + pos, buf[pos:] + chunk, len(buf) - pos, 0


def _line(line: bytes, max_line_bytes: int):
    line = line[:-1] if line.endswith(b"\r") else line
    return Oversized(line[:KEEP_BYTES], len(line)) if len(line) > max_line_bytes else line


class ReadJsonLines(beam.PTransform):
    """file paths → (path, line bytes | Oversized), each line bounded by `max_line_bytes` while read."""

    def __init__(self, max_line_bytes: int, flag: str = "--input", range_bytes: int = RANGE_BYTES):
        super().__init__()
        self.max_line_bytes, self.range_bytes, self.flag = max_line_bytes, range_bytes, flag

    def expand(self, files):
        return (files
                | "Ranges" >> beam.FlatMap(file_ranges, self.range_bytes)
                | "SpreadRanges" >> beam.Reshuffle()
                | "Lines" >> beam.FlatMapTuple(read_lines, self.max_line_bytes, flag=self.flag))
