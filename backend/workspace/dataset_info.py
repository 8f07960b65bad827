"""LLaMA-Factory's ``dataset_info.json``: each entry names a data file and how its columns (and, for
ShareGPT, its role/content tags) map to alpaca or sharegpt fields. Importing one writes, for every
entry whose file is in the workspace, a new dataset with the fields renamed to the ones this
workbench reads (docs/datasets.md), so each is read as LLaMA-Factory reads it. A pre-training entry
(only a ``prompt`` column, as ``c4_demo`` and ``wiki_demo``) becomes ``{"text"}`` rows (objective pretrain).
Rows that can't be read are left out and said: how many, and why the first one.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import BinaryIO, Iterator

import ijson

from backend.access import users
from backend.core import defaults, paths
from backend.workspace import datasets
from backend.core.errors import UserError
from backend.core.store import open_store
from backend.workspace.rows import DatasetError, scan

# LLaMA-Factory's defaults (data/README.md): alpaca columns, sharegpt columns and tags
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
ROLE_OF_TAG = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
               "function_tag": "function_call", "system_tag": "system"}
PASSED_ON = ("system", "tools", "images", "videos", "audios", "kto_tag", "history")   # same name here


def pretraining(entry: dict) -> bool:
    """LLaMA-Factory's pre-training entry: alpaca formatting naming only the ``prompt`` column (the document)."""
    cols = entry.get("columns") or {}
    return entry.get("formatting", "alpaca") == "alpaca" and not entry.get("ranking") and set(cols) == {"prompt"}


def _map_record(rec: dict, entry: dict) -> dict:
    """One row of an entry's file, its columns renamed to this workbench's field names."""
    cols = entry.get("columns") or {}
    out = {}
    if pretraining(entry):
        text = rec.get(cols["prompt"])
        if not isinstance(text, str) or not text.strip():
            raise UserError("err.dsinfo.no_text", column=cols["prompt"])
        return {"text": text}
    if entry.get("formatting", "alpaca") == "sharegpt":
        tags = {**TAGS, **(entry.get("tags") or {})}
        roles = {tags[k]: v for k, v in ROLE_OF_TAG.items()}

        def turns(msgs):
            if isinstance(msgs, dict):           # a ranking entry's chosen/rejected: one message
                return turns([msgs])[0]
            return [{"from": roles.get(m.get(tags["role_tag"]), m.get(tags["role_tag"])),
                     "value": m.get(tags["content_tag"])} if isinstance(m, dict) else m for m in msgs or []]
        out["conversations"] = turns(rec.get(cols.get("messages", SHAREGPT_COLUMNS["messages"])))
        for key in ("chosen", "rejected"):
            if cols.get(key) in rec:
                out[key] = turns(rec[cols[key]])
    else:
        for column, field in ALPACA_COLUMNS.items():       # LLaMA-Factory's default names are ours
            value = rec.get(cols.get(column, field))
            if value is not None:
                out[field] = value
        for key in ("chosen", "rejected"):
            if cols.get(key) in rec:
                out[key] = rec[cols[key]]
        if entry.get("ranking") and isinstance(out.get("output"), list) and len(out["output"]) == 2:
            out["chosen"], out["rejected"] = out.pop("output")     # older ranking files: output [good, bad]
    for key in PASSED_ON:
        if cols.get(key) in rec and rec[cols[key]] not in (None, "", []):
            out[key] = rec[cols[key]]
    return out


def _problem(name: str, entry, home: Path | None, owner: str) -> tuple[DatasetError | None, Path | None]:
    """(why the entry can't be imported, or None, its data file). The file resolves through the registry: a
    dataset ``owner`` may use (users.may_use); another student's private one is refused (audited)."""
    if not isinstance(entry, dict):
        return DatasetError("err.dsinfo.not_object", name=name), None
    file_name = entry.get("file_name")
    if not file_name:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        return (DatasetError("err.dsinfo.on_hub", name=name, hub=hub) if hub
                else DatasetError("err.dsinfo.no_file_name", name=name)), None
    path = (datasets.datasets_dir(home) / Path(str(file_name)).name).resolve()
    held = next((e for e in open_store(home).items("dataset") if Path(e.path).resolve() == path), None)
    if held is None or not path.is_file():
        return DatasetError("err.dsinfo.file_missing", name=name, file=file_name), None
    if not users.may_use(held, owner, home=home):
        return users.refusal(owner, "dataset_info", f"dataset {held.name}",
                             datasets.DatasetRefused("err.dsinfo.not_yours", name=name, file=file_name), home=home), None
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        return DatasetError("err.dsinfo.formatting", name=name, formatting=entry["formatting"]), None
    return None, path


class _Capped(io.RawIOBase):
    """A reader that refuses to read past ``cap`` bytes of ``f`` (a sentence, not a memory spike)."""

    def __init__(self, f: BinaryIO, cap: int):
        self.f, self.cap, self.seen = f, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(min(len(b), self.cap + 1 - self.seen))
        self.seen += len(data)
        if self.seen > self.cap:
            raise DatasetError("err.dsinfo.too_big", mb=self.cap // 2**20)
        b[:len(data)] = data
        return len(data)


def _entries(data: bytes | str | dict | BinaryIO) -> Iterator[tuple[str, object]]:
    """(name, entry) of a dataset_info.json one at a time, from a file, bytes or text: at most
    DATASET_INFO_MAX_BYTES are read; ijson parses the stream, so no more than one entry is held at once."""
    if isinstance(data, dict):
        yield from data.items()
        return
    if isinstance(data, str):
        data = data.encode("utf-8")
    cap = defaults.DATASET_INFO_MAX_BYTES
    if isinstance(data, bytes):
        data = io.BytesIO(data)
    if data.seekable() and data.seek(0, 2) > cap:           # known too big: refused before anything is made
        raise DatasetError("err.dsinfo.too_big", mb=cap // 2**20)
    if data.seekable():
        data.seek(0)
    f = _Capped(data, cap)
    try:                                  # anything but an object yields nothing: the caller says so
        yield from ijson.kvitems(io.BufferedReader(f, 65536), "", use_float=True)
    except ijson.JSONError as e:
        raise DatasetError("err.dsinfo.json", error=e) from None


def import_dataset_info(data: bytes | str | dict | BinaryIO, home: Path, *, owner: str) -> dict:
    """One new dataset per entry of a ``dataset_info.json`` whose file is in the workspace's datasets
    folder, read as a stream (a file, bytes or text, at most DATASET_INFO_MAX_BYTES) and each entry's rows
    written as they are read. Returns {"imported": [{"name", "entry", "format", "rows"}], "skipped": [DatasetError,
    ...]}: the entries not imported, and the rows an imported entry left out."""
    imported, skipped = [], []
    for key, entry in _entries(data):
        problem, src = _problem(key, entry, home, owner)
        if problem:
            skipped.append(problem)
            continue
        name = datasets.unique_name(datasets.safe_name(key), home)
        target = datasets.datasets_dir(home) / f"{name}.jsonl"
        good, bad, first = 0, 0, None
        with paths.atomic_file(target) as out:           # row by row: the file is never held whole
            for n, rec, err in scan(src):                # position 0: the whole file (empty, binary ...)
                if err is None:
                    try:
                        out.write((json.dumps(_map_record(rec, entry), ensure_ascii=False) + "\n").encode("utf-8"))
                        good += 1
                        continue
                    except ValueError as e:
                        err = UserError("err.ds.bad_record", line=n, reason=UserError.of(e))
                bad, first = bad + 1, first or err
        if not good:
            target.unlink(missing_ok=True)
            skipped.append(DatasetError("err.dsinfo.no_rows", name=key, file=src.name,
                                        reason=first or DatasetError("err.ds.holds_none", name=src.name)))
            continue
        if bad:
            skipped.append(DatasetError("err.dsinfo.bad_rows", name=key, file=src.name, bad=bad,
                                        total=bad + good, reason=first))
        entry_ = datasets.register(target, name, "dataset_info", home, owner=owner, parent=src.name)
        imported.append({"name": name, "entry": key, "format": entry_.meta["format"], "rows": entry_.meta["rows"]})
    if not imported and not skipped:
        raise DatasetError("err.dsinfo.shape")
    return {"imported": imported, "skipped": skipped}
