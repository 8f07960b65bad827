"""Reading the records of a dataset file, whatever holds them (jsonl, a JSON array, csv, parquet,
txt), with a cap on line length and each record's position (the line number for jsonl/txt/csv,
1-based as an editor shows it; the record number for a JSON array; the row number for parquet).
``backend/workspace/datasets.py`` gives the records meaning (formats, messages); ``backend/workspace/dataset_view.py``
indexes them for paging."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

from backend.core import defaults
from backend.core.errors import UserError

class DatasetError(UserError):
    """A dataset problem the user can fix; the message (a key and fields) says where and how."""


# -- reading ---------------------------------------------------------------------------------
def max_line_bytes() -> int:
    return int(defaults.setting("DATASET_MAX_LINE_MB") * 1024 * 1024)


def sniff(path: Path) -> DatasetError | None:
    """Why the file can't be read as text at all (missing, empty, binary, UTF-16), else None."""
    if not path.is_file():
        return DatasetError("err.ds.missing", name=path.name)
    if path.stat().st_size == 0:
        return DatasetError("err.ds.empty", name=path.name)
    if path.suffix.lower() == ".parquet":
        return None
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return DatasetError("err.ds.utf16", name=path.name)
    if b"\x00" in head and (head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4):
        return DatasetError("err.ds.utf16_no_bom", name=path.name)
    if b"\x00" in head:
        return DatasetError("err.ds.binary", name=path.name, offset=head.index(0), suffix=path.suffix)
    return None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if looks_gbk(raw):
            raise DatasetError("err.ds.gbk", where=where) from None
        raise DatasetError("err.ds.not_utf8", where=where, byte=f"0x{raw[e.start]:02x}", column=e.start + 1) from None


def looks_gbk(raw: bytes) -> bool:
    """Bytes that aren't UTF-8 but read as Chinese text in GBK/GB18030 (what Windows tools in China save):
    they decode strictly and nearly every non-ASCII character is a CJK ideograph or CJK punctuation."""
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return False
    wide = [c for c in text if ord(c) > 127]
    cjk = sum(1 for c in wide if "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef")
    return bool(wide) and cjk >= 0.9 * len(wide)


def _json_cell(value):
    """CSV cells holding a JSON list/object (messages, conversations) become that list/object."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def scan(path: str | Path) -> Iterator[tuple[int, dict | None, DatasetError | None]]:
    """Every record as (position, record, None) or (position, None, why); never raises for bad
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
        yield 0, None, DatasetError("err.ds.unreadable", name=path.name, text=str(e))


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
    with open(path, "rb") as f:
        for n, raw in enumerate(_lines(f, max_line_bytes()), start=1):
            if n == 1 and isinstance(raw, bytes) and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if isinstance(raw, int) or raw.strip():
                yield n, *parse_line(raw, n, text)


def parse_line(raw: bytes | int, n: int, text: bool = False) -> tuple[dict | None, DatasetError | None]:
    """Line ``n`` of a JSONL (or, with ``text``, a .txt) file as (record, None) or (None, why); ``raw`` is
    its bytes, or its length when it was too long to read (``_lines``). Validation and the row view both
    read a line here."""
    if isinstance(raw, int):
        return None, DatasetError("err.ds.line_long", line=n, mb=raw / 2**20, limit=max_line_bytes() / 2**20)
    try:
        line = _decode(raw, DatasetError("err.ds.where_line", line=n))
    except DatasetError as e:
        return None, e
    if text:
        return {"text": line.rstrip("\r\n")}, None
    try:
        rec = json.loads(line)
    except ValueError as e:
        return None, DatasetError("err.ds.line_json", line=n, msg=getattr(e, "msg", e),
                                  column=getattr(e, "colno", "?"), hint=_json_hint(line))
    if not isinstance(rec, dict):
        return None, DatasetError("err.ds.line_not_object", line=n, type=type(rec).__name__)
    return rec, None


def _json_hint(line: str) -> DatasetError | str:
    """What a JSONL line that doesn't parse most likely is ("" when nothing is likely)."""
    s = line.strip()
    if s.endswith(","):
        return DatasetError("err.ds.hint_comma")
    if s in ("[", "]", "{", "}") or s.startswith('"'):
        return DatasetError("err.ds.hint_document")
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
        yield 0, None, e
        return
    except ValueError as e:
        yield getattr(e, "lineno", 0), None, DatasetError("err.ds.document_json", name=path.name, msg=getattr(e, "msg", e),
                                                          line=getattr(e, "lineno", "?"), column=getattr(e, "colno", "?"))
        return
    for n, rec in enumerate(_unwrap(data) or [], start=1):
        yield _record(n, rec)


def _record(n: int, rec) -> tuple[int, dict | None, DatasetError | None]:
    if isinstance(rec, dict):
        return n, rec, None
    return n, None, DatasetError("err.ds.record_not_object", record=n, type=type(rec).__name__)


class _Capped:
    """A binary file read by ijson, counting the bytes since the last record: a record over ``limit`` bytes
    ends the scan before it is built whole."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.since = f, limit, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.since += len(data)
        if self.since > self.limit + (64 << 10):            # ijson reads ahead one 64 KiB buffer
            raise DatasetError("err.ds.record_long", limit=self.limit / 2**20)
        return data


def _stream_json_array(path: Path):
    """The records of a top-level JSON array, one at a time, parsed by ijson as the file is read: the app
    never holds the whole document, only about one record (a record over DATASET_MAX_LINE_MB ends the scan)."""
    import ijson
    n = 0
    with open(path, "rb") as f:
        if f.read(3) != b"\xef\xbb\xbf":                   # a byte-order mark: ijson takes it for text
            f.seek(0)
        capped = _Capped(f, max_line_bytes())
        try:
            for rec in ijson.items(capped, "item", use_float=True):
                n += 1
                capped.since = 0
                yield _record(n, rec)
        except ijson.JSONError as e:                         # yajl's first line (then where, drawn)
            why = str(e).removeprefix("b'").replace("\\n", "\n").splitlines()[0]
            key = ("err.ds.array_after" if "trailing garbage" in why else "err.ds.array_utf8" if "UTF8" in why
                   else "err.ds.array_cut" if "premature EOF" in why else "err.ds.array_json")
            at = _array_error_at(path, max_line_bytes()) if key in ("err.ds.array_after", "err.ds.array_json") else None
            if at:                                           # yajl says what, not where: say the line and column
                key, (line, column, why) = key + "_at", at
                yield n + 1, None, DatasetError(key, name=path.name, record=n + 1, msg=why, line=line, column=column)
                return
            if key == "err.ds.array_utf8" and head_looks_gbk(path):
                key = "err.ds.array_gbk"
            yield n + 1, None, DatasetError(key, name=path.name, record=n + 1, msg=why)
        except DatasetError as e:
            yield n + 1, None, DatasetError("err.ds.array_record", name=path.name, record=n + 1, reason=e)


def head_looks_gbk(path: Path) -> bool:
    """Whether the start of a file is Chinese text in GBK/GB18030 (``looks_gbk``)."""
    with open(path, "rb") as f:
        return looks_gbk(f.read(1 << 16).rstrip(bytes(range(128, 256))))     # not a character cut in half


def _array_error_at(path: Path, limit: int) -> tuple[int, int, str] | None:
    """(line, column, what) of the first syntax error of a top-level JSON array, found with Python's json one
    record at a time (memory: about one record; only when ijson found an error, which yajl places in no line)."""
    dec, f = json.JSONDecoder(), open(path, encoding="utf-8-sig")
    buf, i, line, col0, state = "", 0, 1, 0, "first"       # buf[0] is at line ``line``, column ``col0 + 1``

    def fill() -> bool:
        nonlocal buf
        more = f.read(1 << 20)
        buf += more
        return bool(more)

    def where(p: int) -> tuple[int, int]:
        nl = buf.count("\n", 0, p)
        return line + nl, (p - buf.rfind("\n", 0, p)) if nl else col0 + p + 1

    with f:
        try:
            fill()
            i = buf.index("[") + 1
            while True:
                while True:                                  # skip blanks, reading on
                    while i < len(buf) and buf[i] in " \t\r\n":
                        i += 1
                    if i < len(buf) or not fill():
                        break
                if i >= len(buf):
                    return None                              # cut short: said as such
                if state == "end":
                    return *where(i), "Extra data"
                if state == "sep" or (state == "first" and buf[i] == "]"):
                    if buf[i] not in ",]":
                        return *where(i), "Expecting ',' delimiter"
                    state, i = ("value" if buf[i] == "," else "end"), i + 1
                    continue
                try:
                    _, end = dec.raw_decode(buf, i)
                except json.JSONDecodeError as e:
                    if len(buf) - i <= limit and fill():     # maybe the record is not all read yet
                        continue
                    return *where(e.pos), e.msg
                if end == len(buf) and fill():
                    continue
                nl = buf.count("\n", 0, end)                # forget the record read
                line, col0 = line + nl, (end - buf.rfind("\n", 0, end) - 1) if nl else col0 + end
                buf, i, state = buf[end:], 0, "sep"
        except (UnicodeDecodeError, ValueError, OSError):
            return None


def _scan_csv(path: Path):
    with open(path, "rb") as fb:
        raw = fb.read()
    try:
        text = _decode(raw, path.name).lstrip("\ufeff")
    except DatasetError as e:
        yield 0, None, e
        return
    del raw
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield 1, None, DatasetError("err.ds.csv", line=1, text=str(e))
        return
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, None, DatasetError("err.ds.csv", line=reader.line_num, text=str(e))
            return
        n, start = start, reader.line_num + 1
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield n, None, DatasetError("err.ds.csv_ragged", line=n, got=len(row), header=len(header))
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
            raise err
        yield n, rec
