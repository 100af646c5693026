"""Bounded reading of CSV files: one streamed pass over the bytes, before polars reads them, that
checks the longest line, the field count of every line against the header and the encoding, so
a malformed file fails fast with a message naming its line (polars would read a file without
newlines into memory whole, and name no line). The delimiter, when the source does not declare
it, is sniffed from the first lines."""

from __future__ import annotations

import atexit
import csv
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainflow.errors import DataError

BLOCK = 4 << 20  # bytes read at a time: memory stays near BLOCK + the longest line
NEWLINE, QUOTE = 10, 34
DELIMITERS = ",;\t|"  # the ones sniffed (others are rarer than a comma inside a value)
SNIFF_BYTES, SNIFF_LINES = 64 << 10, 50


@dataclass(frozen=True)
class CsvLayout:
    """What the scan found: the columns, the data rows, and the file polars should read (the
    source itself, or a UTF-8 copy of it when the source declares another encoding)."""

    path: Path
    columns: list[str]
    rows: int
    lines_are_rows: bool  # no quoted field spans lines: data row i (from 0) is line i + 2
    delimiter: str = ","

    def where(self, row: int) -> str:
        """Where data row `row` (counted from 0, as polars counts) is, in a user's words."""
        return f"line {row + 2}" if self.lines_are_rows else f"data row {row + 1}"


_LOCK = threading.Lock()
_SCANNED: dict[tuple, CsvLayout] = {}  # the checks and copies run once per file per process
_COPIES: list[Path] = []


def scan_csv(
    path: Path, max_line_bytes: int, encoding: str = "utf-8", delimiter: str | None = None
) -> CsvLayout:
    """Check a CSV file line by line in blocks of bounded memory (see module docstring); with
    another `encoding` than UTF-8, also write the UTF-8 copy that polars reads. Without a
    `delimiter`, the one of the first lines is used."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, max_line_bytes, encoding, delimiter)
    with _LOCK:
        if key not in _SCANNED:
            _SCANNED[key] = _scan(path, max_line_bytes, encoding, delimiter)
        return _SCANNED[key]


def sniff_delimiter(path: Path, encoding: str) -> str:
    """The delimiter of the first lines (csv.Sniffer, among DELIMITERS); a comma when they
    show none, or when the header line does not hold the one found."""
    with open(path, "rb") as source:
        sample = source.read(SNIFF_BYTES)
    lines = sample.decode(encoding, errors="replace").splitlines()
    if len(sample) == SNIFF_BYTES:
        lines = lines[:-1]  # the last line read may be cut short
    lines = lines[:SNIFF_LINES]
    try:
        found = csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or no delimiter used alike on every line
        return ","
    return found if lines and found in lines[0] else ","


def _scan(path: Path, max_line_bytes: int, encoding: str, delimiter: str | None) -> CsvLayout:
    copy = None if encoding == "utf-8" else _copy_path(path)
    sniffed = delimiter is None
    delimiter = delimiter or sniff_delimiter(path, encoding)
    scan = _Scan(path, max_line_bytes, encoding, delimiter, sniffed)
    with open(path, "rb") as source, open(copy, "wb") if copy else _NoCopy() as sink:
        carry = b""
        while True:
            block = source.read(BLOCK)
            data = carry + block if carry else block
            used = scan.records(data, final=not block)
            if copy:
                sink.write(scan.text.encode("utf-8"))
            carry = data[used:]
            if not block:
                break
            scan.check_pending(carry)
    if scan.header is None:
        raise DataError(
            f"data.source.path: {path} is empty: a CSV file starts with a header "
            "line naming its columns"
        )
    return CsvLayout(copy or path, scan.header, scan.rows, scan.lines_are_rows, delimiter)


class _NoCopy:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _copy_path(path: Path) -> Path:
    if not _COPIES:
        _COPIES.append(Path(tempfile.mkdtemp(prefix="trainflow-utf8-")))
        atexit.register(shutil.rmtree, _COPIES[0], True)
    return _COPIES[0] / f"{len(list(_COPIES[0].iterdir()))}-{path.name}"


class _Scan:
    """The state of one pass: the line number reached, the header, the rows seen so far."""

    def __init__(
        self, path: Path, max_line_bytes: int, encoding: str, delimiter: str, sniffed: bool
    ):
        self.path, self.limit, self.encoding = path, max_line_bytes, encoding
        self.delimiter, self.sniffed = ord(delimiter), sniffed
        self.line = 1  # the line number of the first byte not yet checked
        self.header: list[str] | None = None
        self.rows = 0
        self.lines_are_rows = True
        self.text = ""

    def records(self, data: bytes, final: bool) -> int:
        """Check the whole records at the start of `data` (all of it when `final`); return
        the bytes they take. Newlines and delimiters inside double quotes are data."""
        buf = np.frombuffer(data, np.uint8)
        newlines = np.flatnonzero(buf == NEWLINE)
        quotes = np.flatnonzero(buf == QUOTE) if b'"' in data else None
        ends = newlines if quotes is None else newlines[_outside(quotes, newlines)]
        if final and len(data) and (not len(ends) or ends[-1] != len(data) - 1):
            if quotes is not None and len(quotes) % 2:
                self._unclosed(newlines, ends)
            ends = np.append(ends, len(data))  # a last line without a newline
        used = int(ends[-1]) + 1 if len(ends) else 0
        if not len(ends):
            self.text = ""
            return 0
        starts = np.concatenate([[0], ends[:-1] + 1])
        self._lengths(starts, ends, newlines)
        first = 0
        if self.header is None:
            self._decoded(data[: int(ends[0])], newlines, ends, quotes)  # named if not text
            line = data[: int(ends[0])].decode(self.encoding).removeprefix("\ufeff")
            self.header = next(csv.reader([line], delimiter=chr(self.delimiter)), [])
            first = 1
        self.text = self._decoded(data[:used], newlines, ends, quotes)
        delims = np.flatnonzero(buf[:used] == self.delimiter)
        if quotes is not None:
            delims = delims[_outside(quotes, delims)]
        # delimiters before each record's end, differenced: far fewer searches than one
        # per delimiter
        fields = np.diff(np.searchsorted(delims, ends), prepend=0) + 1
        if first:
            self.expected = int(fields[0])
        self._fields(fields, starts, ends, buf, newlines, first)
        if len(newlines) > len(ends) - (1 if final and ends[-1] == len(data) else 0):
            self.lines_are_rows = False  # some quoted field holds a newline
        self.rows += len(ends) - first
        self.line += int(np.searchsorted(newlines, used))
        return used

    def check_pending(self, carry: bytes) -> None:
        """The bytes after the last whole record: already too long means no newline follows
        soon, and reading on would only fill memory."""
        if len(carry) > self.limit:
            quoted = b"\n" in carry
            raise DataError(self._too_long(self.line, quoted))

    def _lengths(self, starts: np.ndarray, ends: np.ndarray, newlines: np.ndarray) -> None:
        long = np.flatnonzero(ends - starts > self.limit)
        if len(long):
            start = starts[long[0]]
            line = self.line + int(np.searchsorted(newlines, start))
            quoted = bool(
                np.searchsorted(newlines, ends[long[0]]) - np.searchsorted(newlines, start)
            )
            raise DataError(self._too_long(line, quoted))

    def _too_long(self, line: int, quoted: bool) -> str:
        why = (
            "a quoted field opened there runs on (an unclosed double quote?)"
            if quoted
            else "no newline ends it (not a CSV file, or one written without line breaks?)"
        )
        return (
            f"data.source.path: line {line} of {self.path} is longer than "
            f"{_size(self.limit)}: {why}; fix the file, or raise "
            "data.source.max_line_bytes if its lines really are that long"
        )

    def _unclosed(self, newlines: np.ndarray, ends: np.ndarray) -> None:
        start = int(ends[-1]) + 1 if len(ends) else 0
        line = self.line + int(np.searchsorted(newlines, start))
        raise DataError(
            f"data.source.path: line {line} of {self.path} opens a double quote "
            "that is never closed (the file ends inside it); close the quote, or "
            'double a quote that is part of a value ("")'
        )

    def _decoded(self, chunk: bytes, newlines, ends, quotes) -> str:
        """The chunk as text where a copy needs it ("" for UTF-8, which is only checked)."""
        if self.encoding == "utf-8" and chunk.isascii():
            return ""
        try:
            text = chunk.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise DataError(self._not_decodable(chunk, exc, newlines, ends, quotes)) from None
        return "" if self.encoding == "utf-8" else text

    def _not_decodable(self, chunk: bytes, exc: UnicodeDecodeError, newlines, ends, quotes) -> str:
        line = self.line + int(np.searchsorted(newlines, exc.start))
        record = int(np.searchsorted(ends, exc.start))
        start = int(ends[record - 1]) + 1 if record else 0
        before = np.flatnonzero(np.frombuffer(chunk, np.uint8)[start : exc.start] == self.delimiter)
        if quotes is not None:
            before = before[_outside(quotes, before + start)]
        column = (
            f", column {self.header[len(before)]!r}"
            if self.header and len(before) < len(self.header)
            else ""
        )
        begin = start + int(before[-1]) + 1 if len(before) else start
        value = chunk[begin : begin + 24].split(b"\n")[0].split(bytes([self.delimiter]))[0]
        # bytes 0x80-0x9f are control codes in latin-1 but letters and quotes in cp1252
        likely = "cp1252" if 0x80 <= chunk[exc.start] <= 0x9F else "latin-1"
        fix = (
            f"set the file's encoding, likely data.source.encoding: {likely} (latin-1 or "
            "cp1252 for most Western European files), or save the file as UTF-8"
            if self.encoding == "utf-8"
            else "set data.source.encoding to the file's encoding, or save the file as UTF-8"
        )
        return (
            f"data.source.path: line {line}{column} of {self.path} is not "
            f"{'UTF-8' if self.encoding == 'utf-8' else self.encoding}: byte "
            f"{chunk[exc.start : exc.end]!r} in the value {value!r}; {fix}"
        )

    def _fields(self, fields, starts, ends, buf, newlines, first: int) -> None:
        lengths = ends - starts
        blank = (lengths == 0) | ((lengths == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13))
        bad = np.flatnonzero((fields != self.expected) & ~blank)
        bad = bad[bad >= first]
        if len(bad):
            k = bad[0]
            line = self.line + int(np.searchsorted(newlines, starts[k]))
            more = (
                f" (and {len(bad) - 1} more line(s) in this part of the file)"
                if len(bad) > 1
                else ""
            )
            delimiter = repr(chr(self.delimiter))
            sniffed = (
                f"; the delimiter {delimiter} was sniffed from the first lines: if the file "
                "uses another, set data.source.delimiter"
                if self.sniffed
                else ""
            )
            raise DataError(
                f"data.source.path: line {line} of {self.path} has {int(fields[k])} fields, the "
                f"header (line 1) has {self.expected}{more}: a missing or extra delimiter, or a "
                f"value holding a {delimiter} that needs double quotes; fix or remove the "
                f"line{sniffed}"
            )


def _outside(quotes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Whether each position is outside double quotes: an even number of quotes before it
    (a doubled quote inside a quoted value counts twice, so it keeps the parity)."""
    return np.searchsorted(quotes, positions) % 2 == 0


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"
