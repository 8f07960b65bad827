"""Datasets: read records from jsonl/json/csv/parquet/txt, detect and validate their format, turn
training records into chat messages, convert, split, upload, and list what the workspace holds.

Formats (``detect_format``):
  alpaca    {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}  (or query/response)
  sharegpt  {"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value"}],
            "system"?, "tools"?}, or ms-swift's {"system"?, "conversation": [{"human", "assistant"}]}
  messages  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content", "loss"?: bool,
            "tool_calls"?}], "tools"?}
  xtuner    {"conversation": [{"system"?, "input", "output"}]}
  mcq       {"question", "A", "B", ..., "answer": "A"}        (OpenCompass custom MCQ)
  qa        {"question", "answer"?}                          (OpenCompass custom QA)
  chatml    {"question": [messages], "answer": [str]}        (OpenCompass ChatML)
  text      {"text"} or a .txt file, one document a line      (continued pre-training)
  preference {"prompt", "chosen", "rejected"} and the like   (objective dpo/orpo/kto: backend/pipeline/preference.py)
  prompt    {"prompt", <columns>...}                         (objective grpo: backend/workspace/prompts.py)

Every record comes with its position: the line number for jsonl/txt/csv (1-based, as an editor shows
it), the record number for a JSON array and the row number for parquet. Bad input never raises out
of ``validate``; ``iter_records`` raises ``DatasetError`` naming the line unless told to skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

from backend.access import ownership, users
from backend.core import defaults, i18n, paths
from backend.workspace import formats
from backend.core.errors import UserError
from backend.workspace.dataset_view import open_view
from backend.workspace.rows import DatasetError, iter_records, scan, sniff
from backend.core.registry import Entry
from backend.core.store import open_store

TRAIN_FORMATS = ("messages", "sharegpt", "alpaca", "xtuner")
EVAL_FORMATS = ("mcq", "qa", "chatml")
FORMATS = TRAIN_FORMATS + EVAL_FORMATS + ("text", "preference", "prompt")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
SAMPLES_DIR = defaults.ROOT / "assets" / "datasets"
DETECT_SAMPLE = 200                      # records looked at by detect_format
MCQ_LETTERS = "ABCDEFGHIJ"


# -- formats ---------------------------------------------------------------------------------
def record_format(rec: dict) -> str:
    """The format one record looks like (see the module docstring), or "unknown"."""
    if not isinstance(rec, dict):
        return "unknown"
    if isinstance(rec.get("messages"), list):
        return "messages"
    if isinstance(rec.get("conversations"), list):
        return "sharegpt"
    if isinstance(rec.get("conversation"), list):
        first = rec["conversation"][0] if rec["conversation"] else {}
        return "sharegpt" if isinstance(first, dict) and "human" in first else "xtuner"   # ms-swift vs XTuner
    if ("instruction" in rec and "output" in rec) or ("query" in rec and "response" in rec):
        return "alpaca"
    if ("chosen" in rec and "rejected" in rec) or ("chosen_messages" in rec and "rejected_messages" in rec):
        return "preference"                                # the second: LLaMA-Factory v1's DPO rows
    if "prompt" in rec and not {"completion", "label", "chosen", "rejected", "rejected_response"} & set(rec):
        return "prompt"
    if isinstance(rec.get("question"), list):
        return "chatml"
    if "question" in rec:
        return "mcq" if "A" in rec and "B" in rec else "qa"
    if isinstance(rec.get("text"), str):
        return "text"
    return "unknown"


def detect_format(path: str | Path) -> str:
    """The format of most of the first records: alpaca, sharegpt, messages, xtuner, mcq, qa, text or
    unknown (also for an empty or unreadable file)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return "text" if sniff(path) is None else "unknown"
    counts = Counter()
    for i, (_, rec, err) in enumerate(scan(path)):
        if i >= DETECT_SAMPLE:
            break
        if err is None:
            counts[record_format(rec)] += 1
    return counts.most_common(1)[0][0] if counts else "unknown"


def _text(value, where: str, allow_empty: bool = False) -> str:
    if isinstance(value, list):          # content parts: keep the text ones ("text", or "value" as some write it)
        media = formats.media_part(value)
        if media:
            raise UserError("err.rec.media_part", where=where, media=media)
        parts = [p.get("text", p.get("value", "")) for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        if len(parts) == len(value) and all(isinstance(p, str) for p in parts):
            value = "".join(parts)
    if value is None and allow_empty:
        return ""
    if value is None:
        raise UserError("err.rec.missing", where=where)
    if not isinstance(value, str):
        raise UserError("err.rec.not_string", where=where, type=type(value).__name__)
    if not allow_empty and not value.strip():
        raise UserError("err.rec.empty", where=where)
    return value


def _turn(out: list[dict], who, content, where: str, m: dict | None = None) -> None:
    """Append one turn given in any project's roles; a tool call joins the assistant turn before it."""
    role = formats.ROLE_ALIASES.get(str(who).lower()) if who is not None else None
    if role is None:
        raise UserError("err.rec.role", where=where, role=who)
    m = m or {}
    if role == "tool_call":
        call = formats.tool_call(content, where)
        if not (out and out[-1]["role"] == "assistant"):
            out.append({"role": "assistant", "content": ""})
        out[-1]["tool_calls"] = out[-1].get("tool_calls", []) + [call]
        return
    calls = [formats.tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(m.get("tool_calls") or [])]
    if role == "tool" and isinstance(content, dict):
        content = json.dumps(content, ensure_ascii=False)
    msg = {"role": role, "content": _text(content, where, allow_empty=role != "assistant" or bool(calls))}
    if calls:
        msg["tool_calls"] = calls
    for key in ("tool_call_id", "name") if role == "tool" else ():
        if m.get(key):
            msg[key] = m[key]
    if "loss" in m:
        if not isinstance(m["loss"], bool):
            raise UserError("err.rec.loss", where=where)
        msg["loss"] = m["loss"]
    out.append(msg)


def to_messages(record: dict, fmt: str) -> formats.Chat:
    """The messages of one training record (alpaca, sharegpt, messages, xtuner) as a ``formats.Chat``
    (OpenAI-style messages + the row's tools). Raises ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise UserError("err.rec.not_object", type=type(record).__name__)
    problem = formats.refusal(record)
    if problem:
        raise problem
    out: list[dict] = []
    if fmt == "messages":
        msgs = record.get("messages")
        if not isinstance(msgs, list):
            raise UserError("err.rec.no_list", field="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise UserError("err.rec.item", where=f"messages[{i}]")
            _turn(out, m.get("role"), m.get("content"), f"messages[{i}]", m)
    elif fmt == "sharegpt":
        if record.get("system"):
            out.append({"role": "system", "content": _text(record["system"], "system")})
        conv = record.get("conversations")
        if conv is None and isinstance(record.get("conversation"), list):     # ms-swift: [{"human", "assistant"}]
            for i, t in enumerate(record["conversation"]):
                if not isinstance(t, dict):
                    raise UserError("err.rec.item", where=f"conversation[{i}]")
                _turn(out, "user", t.get("human"), f"conversation[{i}].human")
                _turn(out, "assistant", t.get("assistant"), f"conversation[{i}].assistant")
        elif not isinstance(conv, list):
            raise UserError("err.rec.no_list", field="conversations")
        for i, m in enumerate(conv or []):
            if not isinstance(m, dict):
                raise UserError("err.rec.item", where=f"conversations[{i}]")
            _turn(out, m.get("from", m.get("role")), m.get("value", m.get("content")), f"conversations[{i}]", m)
    elif fmt == "alpaca":          # also ms-swift's query/response/history
        if record.get("system"):
            out.append({"role": "system", "content": _text(record["system"], "system")})
        for i, pair in enumerate(record.get("history") or []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise UserError("err.rec.history", i=i)
            out += [{"role": "user", "content": _text(pair[0], f"history[{i}][0]")},
                    {"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")}]
        q, a = ("query", "response") if "instruction" not in record and "query" in record else ("instruction", "output")
        instruction = _text(record.get(q), q)
        extra = _text(record.get("input"), "input", allow_empty=True)
        out += [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction},
                {"role": "assistant", "content": _text(record.get(a), a)}]
    elif fmt == "xtuner":
        conv = record.get("conversation")
        if not isinstance(conv, list):
            raise UserError("err.rec.no_list", field="conversation")
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict):
                raise UserError("err.rec.item", where=f"conversation[{i}]")
            if turn.get("system"):
                out.append({"role": "system", "content": _text(turn["system"], f"conversation[{i}].system")})
            question = _text(turn.get("input"), f"conversation[{i}].input", allow_empty=True)
            if question or out:        # XTuner's pre-training rows: an empty first input, no template
                out.append({"role": "user", "content": question})
            out.append({"role": "assistant", "content": _text(turn.get("output"), f"conversation[{i}].output")})
    else:
        raise UserError("err.rec.format", fmt=fmt, formats=", ".join(TRAIN_FORMATS))
    _check_roles(out)
    return formats.Chat(out, formats.parse_tools(record.get("tools")))


def _check_roles(msgs: list[dict]) -> None:
    if not any(m["role"] == "assistant" for m in msgs):
        raise UserError("err.rec.no_assistant")
    if any(m["role"] == "system" for m in msgs[1:]):
        raise UserError("err.rec.system_first")
    if msgs[-1]["role"] != "assistant":
        raise UserError("err.rec.end_assistant")


def from_messages(msgs: list[dict], fmt: str) -> dict:
    """A record in ``fmt`` (a training format) holding these messages (and their tools for messages and
    sharegpt). Formats that can't hold something (loss flags, tool calls) lose it: ``convert`` checks."""
    tools = getattr(msgs, "tools", None)
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
    body = msgs[1:] if system else msgs
    if fmt == "messages":
        return {"messages": [dict(m) for m in msgs], **({"tools": tools} if tools else {})}
    if fmt == "sharegpt":
        conv = []
        for m in body:
            if m["role"] == "tool":
                conv.append({"from": "observation", "value": m["content"]})
                continue
            if m["content"] or not m.get("tool_calls"):
                conv.append({"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]})
            conv += [{"from": "function_call", "value": json.dumps(c["function"], ensure_ascii=False)}
                     for c in m.get("tool_calls", [])]
        return {"conversations": conv, **({"system": system} if system else {}),
                **({"tools": json.dumps(tools, ensure_ascii=False)} if tools else {})}
    pairs, pending = [], None
    for m in body:
        if m["role"] == "user":
            pending = m["content"] if pending is None else pending + "\n\n" + m["content"]
        else:
            pairs.append((pending or "", m["content"]))
            pending = None
    if fmt == "alpaca":
        rec = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
        if system:
            rec["system"] = system
        if len(pairs) > 1:
            rec["history"] = [list(p) for p in pairs[:-1]]
        return rec
    if fmt == "xtuner":
        conv = [{"input": q, "output": a} for q, a in pairs]
        if system:
            conv[0] = {"system": system, **conv[0]}
        return {"conversation": conv}
    raise UserError("err.ds.convert_to", fmt=fmt, formats=", ".join(TRAIN_FORMATS))


def _lost(msgs: formats.Chat, back: formats.Chat | None) -> UserError | None:
    """What a conversion lost (None if the converted row, read ``back``, trains the same thing)."""
    key = lambda ms: [(m["role"], m["content"], [c["function"] for c in m.get("tool_calls", [])],  # noqa: E731
                       formats.trained(m)) for m in ms]
    if back is not None and key(msgs) == key(back) and msgs.tools == back.tools:
        return None
    if formats.uses_tools(msgs):
        return UserError("ds.lost.tools")
    if back is not None and [m["role"] for m in msgs] == [m["role"] for m in back] and [m["content"] for m in msgs] == [m["content"] for m in back]:
        return UserError("ds.lost.loss")
    return UserError("ds.lost.turns")


def check_record(rec: dict, fmt: str) -> None:
    """Raise ValueError if ``rec`` is not a good record of ``fmt``."""
    if fmt in TRAIN_FORMATS:
        if not any(formats.trained(m) for m in to_messages(rec, fmt)):
            raise UserError("err.rec.nothing_trained")       # the fine-tune would leave it out
    elif fmt == "mcq":
        _text(rec.get("question"), "question")
        options = [k for k in MCQ_LETTERS if k in rec]
        for k in options:
            _text(str(rec[k]) if rec[k] is not None else None, f"option {k}")
        answer = str(rec.get("answer", "")).strip()
        if answer not in options:
            raise UserError("err.rec.answer", answer=answer, options=", ".join(options))
    elif fmt == "qa":                        # OpenCompass accepts a question without a reference answer
        _text(rec.get("question"), "question")
        if rec.get("answer") is not None:
            _text(str(rec["answer"]), "answer")
    elif fmt == "chatml":                    # OpenCompass ChatML: {"question": [messages], "answer": [str]}
        msgs = rec.get("question")
        if not msgs or not all(isinstance(m, dict) for m in msgs):
            raise UserError("err.rec.chatml_question")
        for i, m in enumerate(msgs):
            _text(m.get("content"), f"question[{i}].content")
        if not isinstance(rec.get("answer", []), list):
            raise UserError("err.rec.chatml_answer")
    elif fmt == "text":
        _text(rec.get("text"), "text")
    elif fmt == "preference":
        raise UserError("err.rec.preference")
    elif fmt == "prompt":
        to_prompt(rec)


def load_messages(path: str | Path, fmt: str | None = None, limit: int | None = None) -> list[formats.Chat]:
    """Every record of a training file as messages (for the fine-tune job). Raises DatasetError
    naming the first bad line."""
    fmt = fmt or detect_format(path)
    name = Path(path).name
    if fmt == "text":
        raise DatasetError("err.ds.is_text", name=name)
    if fmt == "preference":
        raise DatasetError("err.ds.is_preference", name=name)
    if fmt not in TRAIN_FORMATS:
        raise DatasetError("err.ds.is_eval" if fmt in EVAL_FORMATS else "err.ds.no_train_format", name=name, fmt=fmt,
                           formats=", ".join(TRAIN_FORMATS))
    return _read_all(path, lambda rec: row_messages(rec, fmt), limit)


def row_messages(rec: dict, fmt: str) -> formats.Chat:
    """``to_messages`` for a row of a ``fmt`` file: a row in another known format says so."""
    got = record_format(rec)
    if got not in (fmt, "unknown"):
        raise UserError("err.rec.other_format", got=got, fmt=fmt)
    return to_messages(rec, fmt)


def _read_all(path: str | Path, read, limit: int | None) -> list:
    """``read(record)`` for every record (up to ``limit``); DatasetError naming the first bad line."""
    out, name = [], Path(path).name
    for n, rec in iter_records(path):
        try:
            out.append(read(rec))
        except ValueError as e:
            raise DatasetError("err.ds.bad_line", name=name, line=n, reason=UserError.of(e)) from None
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError("err.ds.no_records", name=name)
    return out


def load_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """The documents of a text dataset (``{"text"}`` rows or a .txt file, one document a line) for
    continued pre-training; rows of only assistant text (XTuner's and ms-swift's pre-training form) too."""
    fmt, name = detect_format(path), Path(path).name
    if fmt not in ("text",) + TRAIN_FORMATS:
        raise DatasetError("err.ds.pretrain_format", name=name, fmt=fmt)

    def read(rec: dict) -> str:
        if fmt == "text":
            return _text(rec.get("text"), "text")
        msgs = to_messages(rec, fmt)
        if any(m["role"] != "assistant" for m in msgs):
            raise UserError("err.rec.not_text")
        return "\n".join(m["content"] for m in msgs)
    return _read_all(path, read, limit)


# -- validation ------------------------------------------------------------------------------
PROBLEM_KINDS = {"err.ds.line_long": "long", "err.ds.array_record": "long", "err.ds.not_utf8": "encoding",
                 "err.ds.array_utf8": "encoding", "err.ds.line_json": "json", "err.ds.array_json": "json",
                 "err.ds.array_cut": "json", "err.ds.array_after": "json", "err.ds.document_json": "json",
                 "err.ds.csv_ragged": "ragged", "err.ds.line_not_object": "not_object",
                 "err.ds.record_not_object": "not_object"}       # the rest of scan's problems: "unreadable"


def validate(path: str | Path, fmt: str | None = None, max_errors: int = 1000, lang: str = "en") -> dict:
    """Check every record: {"ok", "format", "rows", "bad", "errors": [{"line", "reason"}], "formats",
    "reasons", "summary"}, the sentences in ``lang``. Never raises for bad content."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    rows = bad = 0
    errors, formats, reasons = [], Counter(), Counter()

    def fail(n, why: UserError, kind):
        nonlocal bad
        bad += 1
        reasons[kind] += 1
        if len(errors) < max_errors:
            errors.append({"line": n, "reason": why.text(lang)})

    for n, rec, err in scan(path):
        if err is not None:
            if n == 0:
                fail(0, err, "file")
                break
            fail(n, err, PROBLEM_KINDS.get(err.key, "unreadable"))
            continue
        rows += 1
        got = record_format(rec)
        formats[got] += 1
        if fmt != "unknown" and got != fmt and not (fmt == "text" and path.suffix.lower() == ".txt"):
            fail(n, UserError("err.ds.mixed", line=n, got=got, fmt=fmt), "mixed")
            continue
        try:
            check_record(rec, fmt)
        except ValueError as e:
            fail(n, UserError("err.ds.bad_record", line=n, reason=UserError.of(e)), "bad_record")
    if not rows and not bad:
        fail(0, UserError("err.ds.holds_none", name=path.name), "file")
    if fmt == "unknown" and rows:
        fail(0, UserError("err.ds.no_format", name=path.name, formats=", ".join(FORMATS)), "unknown_format")
    good = rows - reasons["mixed"] - reasons["bad_record"]
    kinds = ", ".join(f"{v} {i18n.t('ds.kind.' + k, lang, fmt=fmt)}" for k, v in reasons.most_common())
    summary = i18n.t("ds.summary", lang, good=good, bad=bad) + (i18n.t("ds.summary_kinds", lang, kinds=kinds)
                                                               if reasons else "")
    return {"ok": bad == 0 and rows > 0, "format": fmt, "rows": rows, "good": good, "bad": bad,
            "errors": errors, "truncated": bad > len(errors), "formats": dict(formats),
            "reasons": dict(reasons), "summary": summary}


# -- the workspace: where datasets live, listing, upload, convert, split ------------------------
NAME_RE = re.compile(r"[^\w.\-\u4e00-\u9fff]+")


def datasets_dir(home: Path) -> Path:
    d = home / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve(path_or_name: str | Path, home: Path) -> Path:
    """A dataset's file from its registered name or a path; the path must stay inside the
    workspace's datasets folder or the bundled samples."""
    entry = open_store(home).get("dataset", str(path_or_name))
    try:
        real = paths.inside([datasets_dir(home), SAMPLES_DIR], entry.path if entry else path_or_name)
    except paths.OutsideError:
        raise DatasetError("err.ds.outside", path=path_or_name) from None
    if not real.is_file():
        raise DatasetError("err.ds.no_file", path=path_or_name)
    return real


def safe_name(name: str) -> str:
    """A dataset name made of letters, digits, CJK, '.', '-' and '_' (no folders)."""
    stem = NAME_RE.sub("_", Path(unicodedata.normalize("NFKC", str(name))).name).strip("._")
    if not stem:
        raise DatasetError("err.ds.bad_name", name=name)
    return stem[:100]


def unique_name(stem: str, home: Path) -> str:
    store, d = open_store(home), datasets_dir(home)
    taken = lambda n: store.get("dataset", n) or any((d / (n + e)).exists() for e in EXTENSIONS)  # noqa: E731
    name, i = stem, 2
    while taken(name):
        name, i = f"{stem}-{i}", i + 1
    return name


def register(path: Path, name: str, source: str, home: Path, job_id: int | None = None, *, owner: str,
             shared: bool = False, **meta) -> Entry:
    """Put a dataset file in the registry with its format, size and row count (builds its index), as ``owner``'s
    (ownership.register)."""
    path = Path(path)
    try:
        rows = len(open_view(path, home))
    except DatasetError:
        rows = 0
    meta = {"format": detect_format(path), "rows": rows, "size": path.stat().st_size, "source": source, **meta}
    return ownership.register("dataset", name, str(path), meta, owner=owner, job_id=job_id, shared=shared, home=home)


def ensure_samples(home: Path) -> None:
    """Register the bundled samples (assets/datasets) once per workspace: the operator's, shared with the class."""
    store = open_store(home)
    for path in sorted(SAMPLES_DIR.glob("*")):
        if path.suffix in EXTENSIONS:
            entry = store.get("dataset", path.stem)
            if entry is None or entry.path != str(path) or entry.meta.get("size") != path.stat().st_size:
                register(path, path.stem, "sample", home, owner=users.OPERATOR_NAME, shared=True)


def list_datasets(home: Path, by: users.Actor) -> list[Entry]:
    """Registered datasets (bundled samples included), newest first; with ``by``, those that user may use
    (a student: their own uploads and imports, the samples and class datasets, the instructors')."""
    ensure_samples(home)
    return [e for e in open_store(home).items("dataset") if users.may_use(e, by, home=home)]


def save_upload(filename: str, data, home: Path, *, owner: str) -> Entry:
    """Save uploaded bytes (or a binary file object) as a new dataset; refuses a too-big file, an
    unknown extension or a name already taken, and never overwrites."""
    suffix = Path(filename).suffix.lower()
    if suffix not in EXTENSIONS:
        raise DatasetError("err.ds.file_type", name=Path(filename).name, exts=", ".join(EXTENSIONS))
    name = safe_name(Path(filename).stem)
    limit_mb = defaults.setting("UPLOAD_MAX_MB")
    size = len(data) if isinstance(data, (bytes, bytearray)) else getattr(data, "size", None)
    if size is not None and size > limit_mb * 2**20:
        raise DatasetError("err.ds.too_big", name=filename, mb=size / 2**20, limit=limit_mb)
    if unique_name(name, home) != name:
        raise DatasetError("err.ds.exists_upload", name=name)
    users.check_disk(owner, size or 0, DatasetRefused, home)
    target = datasets_dir(home) / (name + suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".upload", dir=target.parent)   # a leftover never blocks
    tmp, written = Path(tmp), 0
    try:
        with open(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray)):
                f.write(data)
                written = len(data)
            else:
                while chunk := data.read(1 << 20):
                    written += len(chunk)
                    if written > limit_mb * 2**20:
                        break
                    f.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if written > limit_mb * 2**20:
        tmp.unlink()
        raise DatasetError("err.ds.over_limit", name=filename, limit=limit_mb)
    if size is None:                          # a stream: its size is known now
        try:
            users.check_disk(owner, written, DatasetRefused, home)
        except DatasetRefused:
            tmp.unlink()
            raise
    os_link_or_fail(tmp, target)
    return register(target, name, "upload", home, owner=owner)


def os_link_or_fail(tmp: Path, target: Path) -> None:
    """Move tmp to target unless target exists (no overwrite, even in a race)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise DatasetError("err.ds.file_exists", name=target.name) from None
    finally:
        tmp.unlink(missing_ok=True)


def _new_target(src: Path, name: str | None, suffix: str, default: str, home: Path | None) -> tuple[str, Path]:
    if name:
        name = safe_name(name)
        if unique_name(name, home) != name:
            raise DatasetError("err.ds.exists", name=name)
    else:
        name = unique_name(default, home)
    return name, datasets_dir(home) / (name + suffix)


def check_source(src: str | Path, owner: str, action: str, home: Path) -> Path:
    """The dataset file a new one is made from, refused (audited) when it is another student's private
    dataset: ``owner`` may use their own, the samples, the class's and the instructors' (users.may_use)."""
    src = Path(src)
    entry = next((e for e in open_store(home).items("dataset") if Path(e.path).resolve() == src.resolve()), None)
    if entry is not None and not users.may_use(entry, owner, home=home):
        users.refuse(owner, action, f"dataset {entry.name}",
                     DatasetRefused("err.users.dataset_not_yours", name=entry.name), home=home)
    return src


def convert(src: str | Path, to_fmt: str, name: str | None = None, *, owner: str, home: Path) -> dict:
    """Write a new JSONL dataset in ``to_fmt`` (a training format) from ``src``; bad rows, and rows
    ``to_fmt`` can't hold without changing what is trained (loss flags, tool calls), are skipped and
    reported, so the new file always validates. Returns {"name", "path", "rows", "skipped", "errors"}, each
    error {"line", "reason": a UserError}."""
    if to_fmt not in TRAIN_FORMATS:
        raise DatasetError("err.ds.convert_to", fmt=to_fmt, formats=", ".join(TRAIN_FORMATS))
    src = check_source(src, owner, "convert", home)
    fmt = detect_format(src)
    if fmt not in TRAIN_FORMATS:
        raise DatasetError("err.ds.convert_from", name=src.name, fmt=fmt, formats=", ".join(TRAIN_FORMATS))
    name, target = _new_target(src, name, ".jsonl", f"{src.stem}-{to_fmt}", home)
    rows, errors = 0, []
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for n, rec, err in scan(src):
            if err is None:
                try:
                    msgs = row_messages(rec, fmt)
                except ValueError as e:
                    err = UserError("err.ds.bad_record", line=n, reason=UserError.of(e))
                else:
                    new = from_messages(msgs, to_fmt)
                    try:
                        back = to_messages(new, to_fmt)
                    except ValueError:
                        back = None
                    lost = _lost(msgs, back)
                    if lost:
                        err = UserError("err.ds.convert_lost", line=n, fmt=to_fmt, lost=lost)
                if err is None:
                    out.write(json.dumps(new, ensure_ascii=False) + "\n")
                    rows += 1
                    continue
            errors.append({"line": n, "reason": err})
    if not rows:
        tmp.unlink()
        raise DatasetError("err.ds.convert_none_why" if errors else "err.ds.convert_none", name=src.name,
                           reason=errors[0]['reason'] if errors else "")
    os_link_or_fail(tmp, target)
    register(target, name, "convert", home, owner=owner, parent=src.name)
    return {"name": name, "path": str(target), "rows": rows, "skipped": len(errors), "errors": errors[:100]}


def split(src: str | Path, val_fraction: float = 0.1, seed: int = 42, *, owner: str, home: Path) -> dict:
    """Split ``src`` into new ``<name>-train`` and ``<name>-val`` datasets (seeded, rows copied as
    they are). Returns {"train": {...}, "val": {...}}."""
    import numpy as np
    if not 0 < val_fraction < 1:
        raise DatasetError("err.ds.val_fraction")
    src = check_source(src, owner, "split", home)
    view = open_view(src, home)
    n = len(view)
    k = max(1, round(n * val_fraction))
    if n < 2 or k >= n:
        raise DatasetError("err.ds.too_few_split", name=src.name, n=n, fraction=val_fraction)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:k]] = True
    suffix = ".txt" if view.text else ".jsonl"
    out = {}
    for part in ("train", "val"):
        out[part] = dict(zip(("name", "path"), _new_target(src, None, suffix, f"{src.stem}-{part}", home)))
    tmps = {p: Path(out[p]["path"]).with_name(f".{Path(out[p]['path']).name}.tmp") for p in out}
    with open(view.rows_path, "rb") as f, open(tmps["train"], "wb") as tr, open(tmps["val"], "wb") as va:
        for i, (start, end, _) in enumerate(view.index):
            f.seek(int(start))
            (va if is_val[i] else tr).write(f.read(int(end) - int(start)).rstrip(b"\r") + b"\n")
    for part in out:
        os_link_or_fail(tmps[part], Path(out[part]["path"]))
        register(Path(out[part]["path"]), out[part]["name"], "split", home, owner=owner, parent=src.name,
                 seed=seed)
        out[part]["rows"] = int((is_val if part == "val" else ~is_val).sum())
    return out


class DatasetRefused(DatasetError, users.Refused):
    """What the acting user may not do (recorded in the audit log)."""


def row_image(dataset: Path, item: str) -> Path | None:
    """An image a row names by a path relative to its dataset file, when it is a file in that folder."""
    try:
        img = paths.inside(Path(dataset).parent, item)
    except paths.OutsideError:
        return None
    return img if img.is_file() else None


def delete(name: str, home: Path, by) -> None:
    """Forget a dataset; its file is removed only when the workbench made it for this entry (ownership.made_here:
    never a sample). Only its owner or an instructor (the operator's datasets only an instructor)."""
    entry = open_store(home).get("dataset", name)
    if entry is None:
        raise DatasetError("err.ds.unknown", name=name)
    ownership.delete("dataset", name, by, home, error=DatasetRefused("err.ds.delete_not_yours", name=name))
    folder = (entry.meta or {}).get("folder")        # an image-text dataset's own folder (backend/workspace/image_text.py)
    if folder and not Path(entry.path).exists():     # its data file went with the entry: its images go too
        folder = Path(folder).resolve()
        if folder.parent == datasets_dir(home).resolve():
            shutil.rmtree(folder, ignore_errors=True)


# -- prompt rows (GRPO: backend/workspace/prompts.py) -----------------------------------------------------
def _column(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def to_prompt(rec: dict) -> dict:
    """One row as ``{"prompt": [messages], <column>: str, ...}``; ValueError saying what is wrong."""
    if not isinstance(rec, dict):
        raise UserError("err.rec.not_object", type=type(rec).__name__)
    fmt = record_format(rec)
    if fmt == "prompt":
        value = rec["prompt"]
        if isinstance(value, list):
            prompt = []
            for i, m in enumerate(value):
                if not isinstance(m, dict):
                    raise UserError("err.pref.not_object", where="prompt", i=i)
                _turn(prompt, m.get("role"), m.get("content"), f"prompt[{i}]", m)
        else:
            prompt = [{"role": "user", "content": _text(value, "prompt")}]
        return {"prompt": prompt, **{k: _column(v) for k, v in rec.items() if k != "prompt"}}
    if fmt == "qa":
        columns = {k: _column(v) for k, v in rec.items() if k != "question"}
        return {"prompt": [{"role": "user", "content": _text(rec["question"], "question")}], **columns}
    if fmt in TRAIN_FORMATS:
        msgs = to_messages(rec, fmt)
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return {"prompt": [dict(m) for m in msgs]}
        if last == 0:
            raise UserError("err.grpo.no_prompt")
        return {"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:last]],
                "answer": msgs[last]["content"]}
    raise UserError("err.grpo.not_prompts", fmt=fmt, formats=", ".join(("prompt", "qa") + TRAIN_FORMATS))
