"""Datasets: formats, bad input, convert/split, upload, paging through the index, search."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from backend.access import users
from backend.workspace import datasets as ds
from backend.workspace.dataset_view import open_view
from backend.core.store import open_store

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
                     {"role": "assistant", "content": "I am ShuBot."}]}
RECORDS = {
    "alpaca": {"instruction": "Add.", "input": "1 and 2", "output": "3"},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "messages": CHAT,
    "xtuner": {"conversation": [{"system": "Be brief.", "input": "hi", "output": "hello"}]},
    "mcq": {"question": "2+2?", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B"},
    "qa": {"question": "2+2?", "answer": "4"},
    "text": {"text": "Once upon a time."},
}


def jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_every_format_is_detected_in_every_container(tmp_path, fmt):
    rec = RECORDS[fmt]
    assert ds.detect_format(jsonl(tmp_path / "a.jsonl", [rec] * 3)) == fmt
    (tmp_path / "a.json").write_text(json.dumps([rec] * 3), encoding="utf-8")
    assert ds.detect_format(tmp_path / "a.json") == fmt
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([rec] * 3), tmp_path / "a.parquet")
    assert ds.detect_format(tmp_path / "a.parquet") == fmt
    assert ds.validate(tmp_path / "a.parquet")["ok"]


def test_csv_txt_and_unknown(tmp_path):
    (tmp_path / "q.csv").write_text("question,A,B,answer\n1+1?,2,3,A\n\"multi\nline\",x,y,B\n", encoding="utf-8")
    assert ds.detect_format(tmp_path / "q.csv") == "mcq"
    assert [n for n, _ in ds.iter_records(tmp_path / "q.csv")] == [2, 3]
    (tmp_path / "c.csv").write_text('messages\n"[{""role"": ""user"", ""content"": ""hi""}, '
                                    '{""role"": ""assistant"", ""content"": ""yo""}]"\n', encoding="utf-8")
    assert ds.load_messages(tmp_path / "c.csv")[0][1]["content"] == "yo"
    (tmp_path / "p.txt").write_text("doc one\n\ndoc two\n", encoding="utf-8")
    assert ds.detect_format(tmp_path / "p.txt") == "text"
    assert list(ds.iter_records(tmp_path / "p.txt")) == [(1, {"text": "doc one"}), (3, {"text": "doc two"})]
    assert ds.detect_format(jsonl(tmp_path / "u.jsonl", [{"foo": 1}])) == "unknown"
    assert ds.detect_format(tmp_path / "missing.jsonl") == "unknown"


def test_to_messages_of_every_training_format():
    assert ds.to_messages(RECORDS["alpaca"], "alpaca") == [
        {"role": "user", "content": "Add.\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    assert ds.to_messages(RECORDS["sharegpt"], "sharegpt")[1] == {"role": "assistant", "content": "hello"}
    assert ds.to_messages(RECORDS["xtuner"], "xtuner")[0] == {"role": "system", "content": "Be brief."}
    msgs = ds.to_messages({"messages": [{"role": "user", "content": "a"},
                                        {"role": "assistant", "content": "b", "loss": False},
                                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
                          "messages")
    assert msgs[1]["loss"] is False and "loss" not in msgs[3]
    for bad, reason in [({"messages": [{"role": "bot", "content": "x"}]}, "role"),
                        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant"),
                        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}, "string"),
                        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "loss": "no"}]}, "loss")]:
        with pytest.raises(ValueError, match=reason):
            ds.to_messages(bad, "messages")
    with pytest.raises(ValueError, match="output is empty"):
        ds.to_messages({"instruction": "x", "output": " "}, "alpaca")
    with pytest.raises(ValueError, match="not a training format"):
        ds.to_messages(RECORDS["qa"], "qa")


def test_load_messages_names_the_bad_line(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", [CHAT, CHAT])
    with open(path, "a") as f:
        f.write("{oops\n")
    assert len(ds.load_messages(path, limit=2)) == 2
    with pytest.raises(ds.DatasetError, match="line 3: invalid JSON"):
        ds.load_messages(path)
    with pytest.raises(ds.DatasetError, match="is an evaluation set"):
        ds.load_messages(jsonl(tmp_path / "q.jsonl", [RECORDS["qa"]]))


def bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the validation must mention)"""
    d.mkdir()
    (d / "malformed.jsonl").write_text(json.dumps(CHAT) + "\n{not json}\n" + json.dumps(CHAT) + "\n")
    jsonl(d / "mixed.jsonl", [CHAT, CHAT, RECORDS["alpaca"]])
    (d / "latin1.jsonl").write_bytes((json.dumps(CHAT) + "\n").encode() + '{"text": "café"}\n'.encode("latin-1"))
    (d / "long.jsonl").write_bytes((json.dumps(CHAT) + "\n").encode() + b'{"text": "' + b"x" * (3 << 20) + b'"}\n')
    (d / "empty.jsonl").write_bytes(b"")
    (d / "binary.jsonl").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 10)
    (d / "ragged.csv").write_text("question,answer\nq1,a1\nq2,a2,extra\nq3\n")
    (d / "utf16.jsonl").write_bytes((json.dumps(CHAT) + "\n").encode("utf-16"))
    (d / "array.json").write_text('[{"text": "a"},\n {"text": }]')
    (d / "notobject.jsonl").write_text(json.dumps(CHAT) + "\n[1, 2]\n")
    return {"malformed": (d / "malformed.jsonl", "line 2: invalid JSON"),
            "mixed": (d / "mixed.jsonl", "line 3: looks like alpaca"),
            "latin1": (d / "latin1.jsonl", "line 2: not UTF-8"),
            "long": (d / "long.jsonl", "line 2 is 3.0 MB long"),
            "empty": (d / "empty.jsonl", "is empty"),
            "binary": (d / "binary.jsonl", "binary file"),
            "ragged": (d / "ragged.csv", "line 3: 3 fields, the header has 2"),
            "utf16": (d / "utf16.jsonl", "UTF-16"),
            "array": (d / "array.json", "invalid JSON"),
            "notobject": (d / "notobject.jsonl", "line 2: a JSON list")}


def test_bad_input_gives_line_numbers_and_never_crashes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATASET_MAX_LINE_MB", "2")
    for name, (path, needle) in bad_files(tmp_path / "bad").items():
        report = ds.validate(path)
        assert not report["ok"], name
        assert any(needle in e["reason"] for e in report["errors"]), (name, report["errors"])
        assert report["summary"]
    ragged = ds.validate(tmp_path / "bad" / "ragged.csv")
    assert [e["line"] for e in ragged["errors"]] == [3, 4] and ragged["good"] == 1
    assert ds.validate(tmp_path / "bad" / "malformed.jsonl")["good"] == 2


def test_bad_files_page_without_crashing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATASET_MAX_LINE_MB", "2")
    for name, (path, needle) in bad_files(tmp_path / "bad").items():
        try:
            view = open_view(path, tmp_path / "home")
        except ds.DatasetError as e:             # empty/binary/UTF-16: refused with the reason
            assert needle in str(e), name
            continue
        rows = view.page(0)
        assert rows, name
        assert all(("record" in r) != ("error" in r) for r in rows), name
    long_row = open_view(tmp_path / "bad" / "long.jsonl", tmp_path / "home").row(1)
    assert long_row["line"] == 2 and "is 3.0 MB long" in str(long_row["error"])


def test_paging_start_middle_end_and_index_reused(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(1, 1001):
            f.write(json.dumps({"text": f"row {i} 第{i}行"}, ensure_ascii=False) + ("\n\n" if i == 500 else "\n"))
    home = tmp_path / "home"
    view = open_view(path, home)
    assert view.built and len(view) == 1000 and view.pages(50) == 20
    assert [r["record"]["text"].split()[1] for r in view.page(0, 50)][:2] == ["1", "2"]
    middle = view.page(10, 50)
    assert middle[0]["record"]["text"].startswith("row 501 ") and middle[0]["line"] == 502  # blank line 501
    end = view.page(19, 50)
    assert len(end) == 50 and end[-1]["record"]["text"].startswith("row 1000 ")
    assert view.page(20, 50) == []
    assert view.row(999)["line"] == 1001
    again = open_view(path, home)
    assert not again.built and len(again) == 1000
    assert list(view.search("ROW 77")) == [76] + list(range(769, 779))
    assert list(view.search("第1000行")) == [999]
    assert list(view.search("", {"text": "row 3 "})) == [2]
    with open(path, "a") as f:                     # an edited file gets a fresh index
        f.write('{"text": "row 1001"}')
    assert len(open_view(path, home)) == 1001


def test_csv_and_parquet_page_through_a_view(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"question": f"q{i}", "answer": str(i)} for i in range(120)]),
                   tmp_path / "a.parquet")
    view = open_view(tmp_path / "a.parquet", tmp_path / "home")
    assert len(view) == 120 and view.page(2, 50)[-1]["record"] == {"question": "q119", "answer": "119"}
    (tmp_path / "a.csv").write_text("question,answer\nq1,a1\n\"two\nlines\",a2\nq3,a3\n")
    rows = open_view(tmp_path / "a.csv", tmp_path / "home").page(0)
    assert [r["line"] for r in rows] == [2, 3, 5] and rows[1]["record"]["question"] == "two\nlines"


def test_convert_and_split_never_overwrite(home):
    src = jsonl(home / "src.jsonl", [RECORDS["alpaca"]] * 9 + [{"instruction": "x", "output": ""}])
    out = ds.convert(src, "sharegpt", home=home, owner="local")
    assert out["name"] == "src-sharegpt" and out["rows"] == 9 and out["skipped"] == 1
    assert out["errors"][0]["line"] == 10
    assert ds.detect_format(out["path"]) == "sharegpt"
    assert ds.load_messages(out["path"])[0] == ds.to_messages(RECORDS["alpaca"], "alpaca")
    assert ds.convert(src, "sharegpt", home=home, owner="local")["name"] == "src-sharegpt-2"
    with pytest.raises(ds.DatasetError, match="already exists"):
        ds.convert(src, "messages", name="src-sharegpt", home=home, owner="local")
    assert open_store(home).get("dataset", "src-sharegpt").meta["format"] == "sharegpt"
    parts = ds.split(out["path"], 0.2, seed=1, home=home, owner="local")
    assert parts["train"]["rows"] == 7 and parts["val"]["rows"] == 2
    again = ds.split(out["path"], 0.2, seed=1, home=home, owner="local")
    assert Path(again["val"]["path"]).read_bytes() == Path(parts["val"]["path"]).read_bytes()
    assert again["val"]["name"] != parts["val"]["name"]
    with pytest.raises(ds.DatasetError, match="too few"):
        ds.split(jsonl(home / "one.jsonl", [CHAT]), 0.1, home=home, owner="local")


def test_upload_limits_duplicates_and_paths(home, monkeypatch):
    data = (json.dumps(CHAT) + "\n").encode()
    entry = ds.save_upload("../../my data.jsonl", data, home=home, owner="local")
    assert entry.name == "my_data" and Path(entry.path).parent == home / "datasets"
    assert entry.meta["format"] == "messages" and entry.meta["rows"] == 1
    with pytest.raises(ds.DatasetError, match="already exists"):
        ds.save_upload("my data.jsonl", data, home=home, owner="local")
    with pytest.raises(ds.DatasetError, match="unsupported file type"):
        ds.save_upload("x.exe", data, home=home, owner="local")
    monkeypatch.setenv("WORKBENCH_UPLOAD_MAX_MB", "0")
    with pytest.raises(ds.DatasetError, match="upload limit"):
        ds.save_upload("big.jsonl", data, home=home, owner="local")
    assert ds.resolve("my_data", home) == Path(entry.path).resolve()
    with pytest.raises(ds.DatasetError, match="outside the workspace"):
        ds.resolve("../../etc/passwd", home)
    with pytest.raises(ds.DatasetError, match="outside the workspace"):
        ds.resolve("/etc/passwd", home)


def test_bundled_samples_are_listed_and_valid(home):
    names = {d.name: d for d in ds.list_datasets(home, by=users.OPERATOR)}
    assert {"shubot_self_cognition", "mini_instructions", "easy_mcq", "easy_qa"} <= set(names)
    shubot = names["shubot_self_cognition"]
    assert shubot.meta["format"] == "messages" and 60 <= shubot.meta["rows"] <= 120
    assert names["mini_instructions"].meta["format"] == "alpaca"
    assert names["easy_mcq"].meta["format"] == "mcq" and names["easy_qa"].meta["format"] == "qa"
    for d in names.values():
        if d.meta["source"] == "sample":
            assert ds.validate(d.path)["ok"], d.name
    text = " ".join(m["content"] for conv in ds.load_messages(shubot.path) for m in conv)
    assert "ShuBot" in text and "小书" in text and "Lab Workbench" in text


def test_a_large_json_array_upload_is_read_in_pieces_and_imports(home):
    """The app never parses a JSON array upload whole: while it is checked and indexed, Python's heap
    never holds a third of the document (tracemalloc), and every record still arrives, in order."""
    rows = [{"messages": [{"role": "user", "content": f"question {i} " + "x" * 200},
                          {"role": "assistant", "content": f"answer {i} " + "y" * 300}]} for i in range(12_000)]
    data = json.dumps(rows, indent=1).encode()
    del rows
    tracemalloc.start()
    try:
        entry = ds.save_upload("big.json", data, owner="local", home=home)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entry.meta["rows"] == 12_000 and entry.meta["format"] == "messages"
    assert peak < len(data) / 3, (peak, len(data))
    view = open_view(entry.path, home=home)
    assert view.row(11_999)["record"]["messages"][0]["content"].startswith("question 11999 ")
    broken = data[:len(data) // 2]                    # cut mid-array: the records before the cut, then why
    problems = [str(err) for _, _, err in ds.scan(Path(ds.save_upload("cut.json", broken, owner="local", home=home).path)) if err]
    assert len(problems) == 1 and "cut.json: record" in problems[0], problems


# -- held-out published data (issue 30) ---------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"


def test_chinese_text_saved_as_gbk_is_said_to_be_gbk(tmp_path):
    """LLaMA-Factory's alpaca_zh_demo saved by a Windows tool (GBK): each row says so, not 'byte 0xc4'."""
    array = (FIXTURES / "llamafactory" / "alpaca_zh_demo.json").read_text(encoding="utf-8")
    (tmp_path / "zh.json").write_bytes(array.encode("gbk"))
    (tmp_path / "zh.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                for r in json.loads(array)).encode("gbk"))
    for path in (tmp_path / "zh.json", tmp_path / "zh.jsonl"):
        report = ds.validate(path)
        assert not report["ok"] and "Chinese in GBK/GB18030 encoding, not UTF-8" in report["errors"][0]["reason"], report
        assert "GBK/GB18030 编码的中文" in ds.validate(path, lang="zh")["errors"][0]["reason"]
    latin1 = tmp_path / "latin1.jsonl"                 # other text that isn't UTF-8 is not taken for Chinese
    latin1.write_bytes('{"text": "café crème"}\n'.encode("latin-1"))
    assert "not UTF-8 (byte 0xe9" in ds.validate(latin1)["errors"][0]["reason"]


def test_json_array_syntax_errors_say_their_line_and_column(tmp_path):
    """A comma missing between two records of an indented array, far into the file (past the 1 MiB the
    locator reads at a time), and text after the array: the line and column an editor shows."""
    rows = [json.dumps(dict(CHAT, id=i), indent=2) for i in range(6000)]
    text = "[\n" + ",\n".join(rows[:5000]) + "\n" + ",\n".join(rows[5000:]) + "\n]\n"    # no comma after 5000
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    at = f"line {want.value.lineno} column {want.value.colno}"
    reason = ds.validate(path)["errors"][0]["reason"]
    assert path.stat().st_size > 1 << 20 and "record 5001" in reason and at in reason, reason
    assert f"第 {want.value.lineno} 行第 {want.value.colno} 列" in ds.validate(path, lang="zh")["errors"][0]["reason"]
    after = tmp_path / "after.json"
    body = json.dumps([CHAT, CHAT], indent=2) + "\n\n"
    after.write_text(body + "more notes\n", encoding="utf-8")
    at = f"line {body.count(chr(10)) + 1} column 1"
    assert f"text after the end of the JSON array, at {at}" in ds.validate(after)["errors"][0]["reason"]
    with pytest.raises(ds.DatasetError, match=at):
        ds.load_messages(after)


def test_the_row_view_quotes_the_limit_it_cuts_at(tmp_path):
    """A 2 MiB row is read by validation (DATASET_MAX_LINE_MB is 16) but not shown: the view says its own 1 MiB."""
    path = tmp_path / "long.jsonl"
    big = {"messages": [{"role": "user", "content": "x" * (2 << 20)}, {"role": "assistant", "content": "ok"}]}
    jsonl(path, [CHAT, big])
    assert ds.validate(path)["ok"]
    row = open_view(path, tmp_path / "home").row(1)
    assert row["line"] == 2 and "error" in row
    text = str(row["error"])
    assert "line 2 is 2.0 MiB: rows over 1 MiB are not shown here" in text and "16" not in text, text
    assert "超过 1 MiB 的行不在此显示" in row["error"].text("zh")
