"""Reading the records of a dataset file, whatever holds them (jsonl, a JSON array, csv, parquet,
txt), with a cap on line length and each record's position (the line number for jsonl/txt/csv,
1-based as an editor shows it; the record number for a JSON array; the row number for parquet).
``backend/datasets.py`` gives the records meaning (formats, messages); ``backend/dataset_view.py``
indexes them for paging."""
from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Iterator

from backend import defaults
from backend.errors import UserError

class DatasetError(UserError):
    """A dataset problem the user can fix; the message (a key and fields) says where and how."""


# -- reading ---------------------------------------------------------------------------------
def max_line_bytes() -> int:
    return int(defaults.setting("DATASET_MAX_LINE_MB") * 1024 * 1024)


def sniff(path: Path) -> str | None:
    """A reason the file can't be read as text at all (empty, binary, UTF-16), else None."""
    if not path.is_file():
        return f"{path.name}: no such file"
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    if path.suffix.lower() == ".parquet":
        return None
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{path.name} is UTF-16 encoded; save it as UTF-8"
    if b"\x00" in head and (head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4):
        return f"{path.name} is UTF-16 encoded (without a byte-order mark); save it as UTF-8"
    if b"\x00" in head:
        return (f"{path.name} is a binary file, not text (a NUL byte at offset {head.index(0)}); "
                f"a {path.suffix} file must be UTF-8 text")
    return None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError("err.ds.not_utf8", where=where, byte=f"0x{raw[e.start]:02x}", column=e.start + 1) from None


def _json_cell(value):
    """CSV cells holding a JSON list/object (messages, conversations) become that list/object."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def scan(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Every record as (position, record, None) or (position, None, reason); never raises for bad
    content. A file-level problem (empty, binary, unreadable) is one item at position 0."""
    path = Path(path)
    problem = sniff(path)
    if problem:
        yield 0, None, problem
        return
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            yield from _scan_parquet(path)
        elif suffix == ".csv":
            yield from _scan_csv(path)
        elif suffix == ".json" and json_document(path):
            yield from _scan_json_array(path)
        else:
            yield from _scan_lines(path, text=suffix == ".txt")
    except (OSError, ValueError) as e:       # unreadable file, broken parquet footer ...
        yield 0, None, f"{path.name}: {e}"


RECORD_LISTS = ("messages", "conversations", "conversation", "question")    # list fields of a record itself


def json_document(path: Path) -> bool:
    """A .json file holding one array of records, or one object wrapping such an array ({"data": [...]}).
    An object is parsed whole, so only up to DATASET_MAX_LINE_MB: a larger one is read as JSONL lines."""
    first = first_char(path)
    if first != "{":
        return first == "["
    if path.stat().st_size > max_line_bytes():
        return False
    try:
        return _unwrap(json.loads(path.read_bytes().decode("utf-8", "replace").lstrip("\ufeff"))) is not None
    except ValueError:
        return False                         # JSONL named .json


def _unwrap(data):
    """The records of a parsed JSON document: an array, or the one array of objects an object wraps."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and not any(k in data for k in RECORD_LISTS):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            return lists[0]
    return None


def first_char(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("latin-1")


def _scan_lines(path: Path, text: bool = False):
    limit = max_line_bytes()
    with open(path, "rb") as f:
        for n, raw in enumerate(_lines(f, limit), start=1):
            if isinstance(raw, int):
                yield n, None, f"line {n} is {raw / 2**20:.1f} MB long (limit {limit / 2**20:.0f} MB)"
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                line = _decode(raw, f"line {n}")
            except DatasetError as e:
                yield n, None, str(e)
                continue
            if text:
                yield n, {"text": line.rstrip("\r\n")}, None
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                yield n, None, (f"line {n}: invalid JSON: {getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')}"
                                + _json_hint(line))
                continue
            if not isinstance(rec, dict):
                yield n, None, f"line {n}: a JSON {type(rec).__name__}, expected an object {{...}}"
                continue
            yield n, rec, None


def _json_hint(line: str) -> str:
    """What a JSONL line that doesn't parse most likely is."""
    s = line.strip()
    if s.endswith(","):
        return ("; the line ends with ',': in JSONL each line is one object, with no commas between lines "
                "(or save one JSON array [...] as a .json file)")
    if s in ("[", "]", "{", "}") or s.startswith('"'):
        return "; the file looks like one JSON document spread over lines: save it as a .json file"
    return ""


def _lines(f, limit: int):
    """Lines of a binary file; a line longer than ``limit`` is skipped and given as its length."""
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while True:                      # skip the rest of the long line without keeping it
                chunk = f.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield size
        else:
            yield raw


def _scan_json_array(path: Path):
    if first_char(path) == "[":
        yield from _stream_json_array(path)
        return
    try:                                     # an object wrapping the array: small (json_document), parsed whole
        data = json.loads(_decode(path.read_bytes(), path.name).lstrip("\ufeff"))
    except DatasetError as e:
        yield 0, None, str(e)
        return
    except ValueError as e:
        yield getattr(e, "lineno", 0), None, (f"{path.name}: invalid JSON: {getattr(e, 'msg', e)} at line "
                                              f"{getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')}")
        return
    for n, rec in enumerate(_unwrap(data) or [], start=1):
        yield _record(n, rec)


def _record(n: int, rec) -> tuple[int, dict | None, str | None]:
    if isinstance(rec, dict):
        return n, rec, None
    return n, None, f"record {n}: a JSON {type(rec).__name__}, expected an object {{...}}"


JSON_CHUNK = 1 << 20                         # bytes read at a time from a JSON array
JSON_SPACE = " \t\r\n\ufeff"


class _Reader:
    """A JSON text read in chunks: ``buf`` holds what is not consumed yet (about one record), ``i`` the
    position in it; ``lines`` counts the lines already dropped, for messages."""

    def __init__(self, f):
        self.f, self.buf, self.i, self.lines, self.eof = f, "", 0, 0, False
        self.utf8 = codecs.getincrementaldecoder("utf-8")()

    def fill(self, n: int = JSON_CHUNK) -> bool:
        """Read ``n`` more bytes, dropping what was consumed; False at the end of the file."""
        if self.eof:
            return False
        data = self.f.read(n)
        self.eof = len(data) < n
        self.lines += self.buf.count("\n", 0, self.i)
        self.buf, self.i = self.buf[self.i:] + self.utf8.decode(data, final=self.eof), 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            while self.i < len(self.buf) and self.buf[self.i] in JSON_SPACE:
                self.i += 1
            if self.i < len(self.buf):
                return self.buf[self.i]
            if not self.fill():
                return ""

    def where(self, at: int) -> str:
        return f"line {self.lines + self.buf.count(chr(10), 0, at) + 1}"

    def value(self, limit: int):
        """The next JSON value; ValueError when it is invalid or longer than ``limit`` bytes."""
        want = JSON_CHUNK
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.i)
                if end < len(self.buf) or self.eof:      # a number or literal may go on past the buffer
                    self.i = end
                    return obj
            except json.JSONDecodeError as e:
                cut = e.pos >= len(self.buf) - 8 or e.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    raise ValueError(f"invalid JSON: {e.msg} at {self.where(e.pos)}") from None
            if len(self.buf) - self.i > limit:
                raise ValueError(f"longer than {limit / 2**20:.0f} MB (DATASET_MAX_LINE_MB)")
            self.fill(want)
            want *= 2


_DECODER = json.JSONDecoder()


def _stream_json_array(path: Path):
    """The records of a top-level JSON array, one at a time, read in chunks: the app never holds the
    whole document, only about one record (a record over DATASET_MAX_LINE_MB ends the scan)."""
    n = 0
    with open(path, "rb") as f:
        r = _Reader(f)
        try:
            r.peek()
            r.i += 1                                             # the "[" (first_char said so)
            while True:
                c = r.peek()
                if c == "]" and n == 0:
                    break
                if n:
                    if c == "]":
                        break
                    if c != ",":
                        yield n + 1, None, (f"{path.name}: expected ',' or ']' after record {n} at {r.where(r.i)}"
                                            if c else f"{path.name}: the JSON array ends early (no closing ])")
                        return
                    r.i += 1
                    r.peek()
                n += 1
                yield _record(n, r.value(max_line_bytes()))
            r.i += 1
            if r.peek():
                yield n + 1, None, f"{path.name}: text after the end of the JSON array at {r.where(r.i)}"
        except UnicodeDecodeError as e:
            yield n + 1, None, f"{path.name}: not UTF-8 ({e.reason}) near record {n + 1}"
        except ValueError as e:
            yield n, None, f"{path.name}: record {n}: {e}"


def _scan_csv(path: Path):
    with open(path, "rb") as fb:
        raw = fb.read()
    try:
        text = _decode(raw, path.name).lstrip("\ufeff")
    except DatasetError as e:
        yield 0, None, str(e)
        return
    del raw
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield 1, None, f"line 1: {e}"
        return
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, None, f"line {reader.line_num}: {e}"
            return
        n, start = start, reader.line_num + 1
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield n, None, f"line {n}: {len(row)} fields, the header has {len(header)}"
            continue
        yield n, {k: _json_cell(v) for k, v in zip(header, row)}, None


def _scan_parquet(path: Path):
    import pyarrow.parquet as pq
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield n, rec, None


def iter_records(path: str | Path, skip_bad: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every record of a jsonl/json/csv/parquet/txt file.
    A bad line raises DatasetError naming it, or is skipped with ``skip_bad``."""
    for n, rec, err in scan(path):
        if err is not None:
            if skip_bad and n:
                continue
            raise DatasetError("err.plain", text=err)
        yield n, rec
