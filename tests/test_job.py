"""A job (and a registry entry) is a record with typed fields, one spelling each, and every backend function
takes its workspace and actor explicitly. A type checker (mypy) holds both: it finds code that still reads a
record as a dict (``job["state"]``, ``entry.get("meta")``) and calls that leave out a required ``home`` or ``by``
(``BackgroundTask(apikeys.used, key_id, 0)`` once crashed every counted API request after its answer)."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

MYPY = [sys.executable, "-m", "mypy", "--check-untyped-defs", "--ignore-missing-imports", "--follow-imports=silent",
        "--explicit-package-bases", "--no-error-summary", "--show-column-numbers",
        "--cache-dir", str(ROOT / ".mypy_cache")]
RECORD_AS_DICT = re.compile(r'"(Job|Entry)( \| None)?" (is not indexable|has no attribute "get")')
NO_CONTEXT = re.compile(r'Missing (positional|named) argument "(home|by|who|actor|owner)"')


def faults(*targets: str, cwd=ROOT) -> list[str]:
    out = subprocess.run(MYPY + list(targets), cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "MYPYPATH": str(ROOT)})
    assert "error: " in out.stdout or out.returncode == 0, out.stdout + out.stderr     # it ran
    return [line for line in out.stdout.splitlines() if RECORD_AS_DICT.search(line) or NO_CONTEXT.search(line)]


@pytest.mark.slow
def test_no_code_reads_a_record_as_a_dict_or_leaves_out_its_context():
    assert faults("backend", "pages", "jobs", "tests", "bench", "app.py") == []


@pytest.mark.slow
def test_the_checker_sees_both_faults(tmp_path):
    (tmp_path / "probe.py").write_text(
        "from pathlib import Path\n"
        "from starlette.background import BackgroundTask\n"
        "from backend.access import apikeys, users\n"
        "from backend.runtime import queue\n\n\n"
        "def probe(home: Path):\n"
        "    job = queue.get(1, home, by=users.OPERATOR)\n"
        "    return job['state'], BackgroundTask(apikeys.used, 1, 0)\n")
    found = faults(str(tmp_path / "probe.py"), cwd=tmp_path)
    assert any('"Job" is not indexable' in f for f in found), found
    assert any('Missing positional argument "home"' in f for f in found), found
