"""Browsing a dataset without loading it: a line-offset index built once in one pass, pages read by
seeking, and search/filters by streaming the bytes.

The index of a file is an int64 array of (start, end, line number) per non-blank line, written in
chunks to ``<home>/.cache/datasets/<key>.idx`` and memory-mapped, so memory does not grow with the
file. The key is the file's real path, size and mtime: an edited file gets a fresh index.
JSON arrays, CSV and parquet files are first written once as a JSONL "view" beside the index (each
row remembers its source line), so every format pages the same way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from backend.core import defaults, paths
from backend.workspace import rows

CHUNK = 16 << 20            # bytes read at a time while indexing or searching
CELL_LIMIT = 1 << 20        # a row longer than this is shown as a note, not parsed


def cache_dir(home: Path) -> Path:
    d = home / ".cache" / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]


class View:
    """A dataset opened for browsing: ``len(view)`` rows, ``view.page(n)``, ``view.search(q)``."""

    def __init__(self, path: str | Path, home: Path):
        self.path = Path(path)
        problem = rows.sniff(self.path)
        if problem:
            raise problem
        self.text = self.path.suffix.lower() == ".txt"
        key = _key(self.path)
        base = cache_dir(home) / key
        if self.path.suffix.lower() in (".jsonl", ".txt") or (
                self.path.suffix.lower() == ".json" and not rows.json_document(self.path)):
            self.rows_path = self.path
        else:
            self.rows_path = base.with_suffix(".jsonl")
        self.index_path = base.with_suffix(".idx")
        self.built = False
        if not self.index_path.exists():
            self._build()
            self.built = True
        size = self.index_path.stat().st_size
        self.index = (np.memmap(self.index_path, dtype=np.int64, mode="r").reshape(-1, 3) if size
                      else np.zeros((0, 3), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    # -- building ---------------------------------------------------------------------------
    def _build(self) -> None:
        with paths.atomic_file(self.index_path) as out:
            if self.rows_path == self.path:
                _index_lines(self.path, out)
            else:
                self._write_view(out)

    def _write_view(self, out) -> None:
        """Rows of a JSON array / CSV / parquet as JSONL, each row's (start, end, source line)."""
        pos = 0
        with paths.atomic_file(self.rows_path) as f:
            for n, rec, err in rows.scan(self.path):
                if n == 0:
                    continue
                line = (json.dumps(rec, ensure_ascii=False, default=str) if err is None
                        else json.dumps({"_error": str(err)}, ensure_ascii=False)).encode() + b"\n"
                f.write(line)
                out.write(np.array([pos, pos + len(line) - 1, n], dtype=np.int64).tobytes())
                pos += len(line)

    # -- reading ----------------------------------------------------------------------------
    def _raw(self, i: int) -> bytes | int:
        start, end, _ = (int(x) for x in self.index[i])
        if end - start > CELL_LIMIT:
            return end - start
        with open(self.rows_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def row(self, i: int) -> dict:
        """Row ``i`` (0-based): {"row", "line", "record"} or {"row", "line", "error": a DatasetError}."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i + 1} is out of range (1-{len(self)})")
        line = int(self.index[i][2])
        raw = self._raw(i)
        out = {"row": i, "line": line}
        if isinstance(raw, int) and raw <= rows.max_line_bytes():     # readable, too long to show here
            return {**out, "error": rows.DatasetError("err.ds.row_long", line=line, mb=raw / 2**20,
                                                         limit=CELL_LIMIT / 2**20)}
        rec, err = rows.parse_line(raw.removeprefix(b"\xef\xbb\xbf") if isinstance(raw, bytes) else raw, line,
                                      self.text)
        if err is not None:
            return {**out, "error": err}
        if set(rec) == {"_error"} and self.rows_path != self.path:
            return {**out, "error": rows.DatasetError("err.plain", text=rec["_error"])}   # from scan, in English
        return {**out, "record": rec}

    def page(self, number: int, size: int | None = None) -> list[dict]:
        """Page ``number`` (0-based) of ``size`` rows; an out-of-range page is empty."""
        size = size or defaults.DATASET_PAGE_ROWS
        lo = max(0, number * size)
        return [self.row(i) for i in range(lo, min(len(self), lo + size))]

    def pages(self, size: int | None = None) -> int:
        size = size or defaults.DATASET_PAGE_ROWS
        return max(1, -(-len(self) // size))

    # -- searching --------------------------------------------------------------------------
    def search(self, query: str = "", filters: dict[str, str] | None = None, limit: int | None = None) -> np.ndarray:
        """Rows (0-based, ascending) whose text contains ``query`` (case-insensitive for ASCII, also
        matching JSON \\u escapes) and whose fields contain each filter value."""
        filters = {k: v for k, v in (filters or {}).items() if k and v}
        needles = [q for q in [query, *filters.values()] if q]
        if not needles:
            return np.arange(len(self)) if limit is None else np.arange(min(limit, len(self)))
        hits = self._scan_bytes(needles[0])
        for extra in needles[1:]:                       # rows must contain every needle somewhere
            hits = np.intersect1d(hits, self._scan_bytes(extra), assume_unique=True)
        if filters:
            keep = []
            for i in hits:
                rec = self.row(int(i)).get("record") or {}
                if all(v.lower() in _field_text(rec, k).lower() for k, v in filters.items()):
                    keep.append(i)
                    if limit is not None and len(keep) >= limit:
                        break
            hits = np.array(keep, dtype=np.int64)
        return hits if limit is None else hits[:limit]

    def _scan_bytes(self, query: str) -> np.ndarray:
        forms = {query.lower().encode(), json.dumps(query).strip('"').lower().encode()}
        starts = self.index[:, 0]
        found: set[int] = set()
        overlap = max(len(f) for f in forms) - 1
        with open(self.rows_path, "rb") as f:
            base, tail = 0, b""
            while chunk := f.read(CHUNK):
                buf = (tail + chunk).lower()
                offset = base - len(tail)
                for form in forms:
                    at = buf.find(form)
                    while at != -1:
                        found.add(int(np.searchsorted(starts, offset + at, side="right")) - 1)
                        nl = buf.find(b"\n", at)        # one hit a row is enough
                        at = buf.find(form, nl) if nl != -1 else -1
                base += len(chunk)
                tail = buf[len(buf) - overlap:] if overlap else b""
        return np.array(sorted(i for i in found if i >= 0), dtype=np.int64)


def _field_text(rec: dict, field: str) -> str:
    value = rec.get(field, "")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _index_lines(path: Path, out) -> None:
    """Write (start, end, line) int64 triples of every non-blank line, chunk by chunk."""
    line_no = 0          # lines seen before the current chunk
    start = 0            # start of the line that continues into the next chunk
    pos = 0
    prev_last = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + pos
            if len(nl):
                starts = np.concatenate(([start], nl[:-1] + 1))
                lines = np.arange(line_no + 1, line_no + 1 + len(nl), dtype=np.int64)
                _write(out, starts, nl, lines, chunk, pos, prev_last)
                start = int(nl[-1]) + 1
                line_no += len(nl)
            pos += len(chunk)
            prev_last = chunk[-1:]
    if start < pos:      # the last line has no newline
        out.write(np.array([start, pos, line_no + 1], dtype=np.int64).tobytes())


def _write(out, starts, ends, lines, chunk: bytes, pos: int, prev_last: bytes) -> None:
    length = ends - starts
    keep = length > 0
    one = np.flatnonzero(length == 1)        # a lone "\r" is a blank line too
    for j in one:
        s = int(starts[j]) - pos
        byte = chunk[s:s + 1] if s >= 0 else prev_last
        if byte == b"\r":
            keep[j] = False
    trip = np.stack([starts[keep], ends[keep], lines[keep]], axis=1)
    out.write(np.ascontiguousarray(trip, dtype=np.int64).tobytes())


def open_view(path: str | Path, home: Path) -> View:
    return View(path, home)
