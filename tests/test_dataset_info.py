"""LLaMA-Factory's dataset_info.json is read as a stream with a size cap, and each entry's rows are written as
they are read: a dataset_info.json past the cap is refused with a sentence after reading no more than the cap,
and importing an entry whose file is large grows the app's memory by little."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backend.core import defaults
from backend.workspace import datasets as ds
from backend.workspace.dataset_info import import_dataset_info
from backend.core.store import open_store
from tests.conftest import ROOT, env_for


def test_a_dataset_info_past_the_cap_is_refused_having_read_at_most_the_cap(home, tmp_path):
    cap = defaults.DATASET_INFO_MAX_BYTES
    big = tmp_path / "dataset_info.json"
    entry = json.dumps({"file_name": "x.jsonl", "columns": {"prompt": "q" * 200}})
    with open(big, "w") as f:
        f.write("{" + ",".join(f'"d{i}": {entry}' for i in range(4 * cap // len(entry))) + "}")
    total = big.stat().st_size
    cat = subprocess.Popen(["cat", str(big)], stdout=subprocess.PIPE)        # a stream that can't seek or tell its size
    try:
        with pytest.raises(ds.DatasetError, match=f"larger than {cap // 2**20} MB") as e:
            import_dataset_info(cat.stdout, home, owner="local")
        left = len(cat.stdout.read())
    finally:
        cat.stdout.close()
        cat.wait(10)
    assert total - left <= cap + 128 * 1024, "read past the cap"
    assert "超过" in e.value.text("zh")
    with open(big, "rb") as f:                                               # a file: refused by its size
        with pytest.raises(ds.DatasetError, match="larger than"):
            import_dataset_info(f, home, owner="local")
    with pytest.raises(ds.DatasetError, match="larger than"):
        import_dataset_info(big.read_bytes(), home, owner="local")
    assert open_store(home).items("dataset") == []
    with pytest.raises(ds.DatasetError, match="not valid JSON"):
        import_dataset_info(b'{"a": {"file_name": ', home, owner="local")


IMPORT_RSS = """
import sys
from pathlib import Path
from backend.workspace.dataset_info import import_dataset_info

def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024

home = Path(sys.argv[1])
base = rss('VmRSS:')
out = import_dataset_info(Path(sys.argv[2]).read_bytes(), home, owner='local')
print(out['imported'][0]['rows'], (rss('VmHWM:') - base) // 2**20)
"""


def test_importing_a_large_entry_streams_its_rows(home, tmp_path):
    d = home / "datasets"
    d.mkdir(exist_ok=True)
    n = 300_000
    with open(d / "big.jsonl", "w") as f:
        for lo in range(0, n, 50_000):
            f.write("".join(json.dumps({"q": f"question {i} " + "x" * 120, "a": f"answer {i} " + "y" * 120}) + "\n"
                            for i in range(lo, lo + 50_000)))
    ds.register(d / "big.jsonl", "big", "upload", home, owner="local")
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"renamed": {"file_name": "big.jsonl", "columns": {"prompt": "q", "response": "a"}}}))
    out = subprocess.run([sys.executable, "-c", IMPORT_RSS, str(home), str(info)], cwd=ROOT, env=env_for(home),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows, grown = map(int, out.stdout.split())
    assert rows == n
    first = json.loads((d / "renamed.jsonl").open().readline())
    assert first == {"instruction": "question 0 " + "x" * 120, "output": "answer 0 " + "y" * 120}
    assert grown < 100, f"the import grew the process by {grown} MB"
