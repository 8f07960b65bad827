"""The sandbox for student code (backend/runtime/sandbox.py), for real: bubblewrap, the lagent engine's Python, the
agent job through the real worker against a scripted OpenAI-compatible server. Each escape a student (or a
model) would try fails inside, ends with a sentence the model reads, and the code runs as another uid than
the worker's. Without bubblewrap the interpreter is refused with why and how to fix it."""
from __future__ import annotations

import json
import os
import socket

import pytest

from backend.access import users
from backend.pipeline import agent
from backend.runtime import engines, logs, queue, sandbox
from backend.runtime.sandbox import Limits
from backend.core.store import open_store
from tests.conftest import run_burst
from tests.fixtures.fake_openai import KEY, FakeOpenAI
from tests.test_agent import ANSWER, step

needs_bwrap = pytest.mark.skipif(sandbox.bwrap() is None, reason="bubblewrap is not installed (./workbench test installs it)")


@needs_bwrap
def test_interpreter_limits_end_with_a_sentence(tmp_path):
    folder = tmp_path / "files"
    limits = Limits(cpu_s=1, memory_mb=256, wall_s=20, output_kb=1)
    assert sandbox.run("print(6 * 7)", folder, limits) == \
        {"ok": True, "output": "42\n", "exit": 0, "error": None, "files": []}
    assert sandbox.run("import sys; print(sys.stdin.read()[::-1])", folder, limits, stdin=b"abc")["output"] == "cba\n"
    assert sandbox.run("while True: pass", folder, limits)["error"].startswith("stopped: the code used more than 1 s of CPU")
    assert sandbox.run("import time; time.sleep(60)", folder, Limits(wall_s=2))["error"] == \
        "stopped: the code ran longer than 2 s of wall time"
    assert sandbox.run("x = bytearray(2 * 1024**3)", folder, limits)["error"] == \
        "stopped: the code used more than 256 MB of memory"
    assert sandbox.run("open('big', 'wb').write(b'x' * 3 * 2**20)", folder, Limits(file_mb=1))["error"] == \
        "stopped: the code wrote a file larger than 1 MB"
    assert sandbox.run("print('x' * 5000)", folder, limits)["output"].endswith("[output cut at 1 KB]")
    assert sandbox.run("open('t.csv', 'w').write('a,b\\n1,2\\n')", folder, limits)["files"] == ["t.csv"]
    assert sandbox.run("import os\nwhile True: os.fork()", folder, limits)["error"].startswith(
        "the code may not start another process")
    assert "uid=" not in sandbox.run("import os; os.system('id')", folder, limits)["output"]


def test_the_app_reads_what_a_run_wrote_without_following_links(tmp_path):
    folder = tmp_path / "files"
    (folder / "sub").mkdir(parents=True)
    (folder / "plot.png").write_bytes(b"p" * 100)
    (folder / "sub" / "t.csv").write_text("a,b\n")
    secret = tmp_path / "workbench.db"
    secret.write_text("the database")
    (folder / "db.link").symlink_to(secret)
    os.link(secret, folder / "db.hard")
    (folder / "out").symlink_to(tmp_path, target_is_directory=True)
    assert list(sandbox.files(folder)) == ["plot.png", "sub/t.csv"]
    assert sandbox.read(folder, "plot.png", 10) == b"p" * 10                       # capped
    assert sandbox.read(folder, "sub/t.csv", 100) == b"a,b\n"
    for name in ("db.link", "db.hard", "out/workbench.db", "../workbench.db", str(secret)):
        with pytest.raises(OSError):
            sandbox.read(folder, name, 100)


def test_without_bubblewrap_the_interpreter_is_refused(home, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BWRAP", str(tmp_path / "no-bwrap"))
    got = sandbox.run("print('ran')", tmp_path / "files", Limits())
    assert not got["ok"] and "ran" not in got["output"]
    assert "bubblewrap" in got["error"] and "apt-get install bubblewrap" in got["error"]
    assert "bubblewrap" in sandbox.refusal().text("zh")
    monkeypatch.setenv("WORKBENCH_BWRAP", "bwrap")
    monkeypatch.setenv("PATH", str(tmp_path))                                     # a PATH without bwrap
    assert sandbox.refusal().key == "err.sandbox.no_bwrap"
    # only the operator of a single-user box may run it bare, and says so by an unsafe setting
    monkeypatch.setenv("WORKBENCH_UNSAFE_UNSANDBOXED_CODE", "1")
    for mode in ("accounts", "header"):
        monkeypatch.setenv("WORKBENCH_AUTH", mode)
        assert not sandbox.run("print('ran')", tmp_path / "files", Limits())["ok"]
    monkeypatch.setenv("WORKBENCH_AUTH", "none")
    assert sandbox.run("print('ran')", tmp_path / "files", Limits())["output"] == "ran\n"
    if engines.installed("lagent", home=home):                                               # refused at submit, too
        monkeypatch.setenv("WORKBENCH_UNSAFE_UNSANDBOXED_CODE", "0")
        with pytest.raises(queue.SubmitError, match="apt-get install bubblewrap"):
            queue.submit("agent", {"prompt": "hi", "url": "http://127.0.0.1:9/v1", "model": "m"}, home=home, owner="local")
        queue.submit("agent", {"prompt": "hi", "url": "http://127.0.0.1:9/v1", "model": "m", "tools": []}, home=home, owner="local")


@needs_bwrap
@pytest.mark.slow
def test_escapes_fail_inside_the_agent_job(home):
    if not engines.installed("lagent", home=home):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    users._secret(home)
    open_store(home)
    db, key = home / "workbench.db", home / "secret.key"
    assert db.exists() and key.exists()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    escapes = {
        "uid": "import os; print('uid', os.getuid(), os.geteuid())",
        "sqlite": f"import sqlite3; print(sqlite3.connect({str(db)!r}).execute('select name, role from users').fetchall())",
        "hook": "import sys; sys.modules['__main__']._hook = None\nprint(open('../../../../workbench.db', 'rb').read(16))",
        "key": f"print(open({str(key)!r}, 'rb').read())",
        "socket": f"import socket; socket.create_connection(('127.0.0.1', {port}), 3); print('connected')",
        "ctypes": "import ctypes; print('system', ctypes.CDLL(None).system(b'id'))\nraise SystemExit('no shell')",
        "links": f"import os; os.symlink({str(db)!r}, 'db.link'); os.link({str(db)!r}, 'db.hard')",
        "fork": "import os\nwhile True: os.fork()",
        "memory": "x = bytearray(2 * 1024**3)",
        "proc": "import os; pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit()); print('pids', pids)\n"
                "raise SystemExit(f'only {len(pids)} processes')",
    }
    fake = FakeOpenAI()
    fake.script += [step(f"I try {name}.", code) for name, code in escapes.items()] + [ANSWER]
    try:
        job_id = queue.submit("agent", {"url": fake.url + "/v1", "model": "fake-model", "prompt": "escape",
                                        "memory_mb": 512, "wall_s": 60, "max_turns": 12},
                              home=home, secrets={"OPENAI_API_KEY": KEY}, owner="local")
        run_burst(home, timeout=300)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()                                    # nobody connected to the listening port
    finally:
        fake.close()
        listener.close()
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    trace = json.loads((home / "jobs" / str(job_id) / "artifacts" / "trace.json").read_text())
    got = dict(zip(escapes, [s for s in trace if s["type"] == "tool"]))
    assert got["uid"]["output"] == "uid 65534 65534\n" and os.getuid() != 65534          # not the worker's uid
    assert "unable to open database file" in got["sqlite"]["error"]
    assert "No such file or directory" in got["hook"]["error"]
    assert "No such file or directory" in got["key"]["error"]
    assert "Connection refused" in got["socket"]["error"] or "unreachable" in got["socket"]["error"]
    assert "uid=" not in got["ctypes"]["output"] and got["ctypes"]["error"] == "no shell"
    assert "No such file or directory" in got["links"]["error"]                  # the hard link: no database inside
    assert got["fork"]["error"].startswith("the code may not start another process")
    assert got["memory"]["error"] == "stopped: the code used more than 512 MB of memory"
    assert got["proc"]["error"] == "only 2 processes"                            # bwrap's init and the code
    for name, s in got.items():
        assert name == "uid" or not s["ok"], name
        assert "sqlite format" not in s["output"].lower() and "instructor" not in s["output"], name
    sent = json.dumps(fake.requests[-1]["messages"])                             # the model read each sentence
    assert all(s["error"][:40] in sent for s in got.values() if s["error"])
    # the dangling link the code left is neither listed nor opened by the app
    assert "db.link" not in agent.files(job_id, home) and "db.link" not in logs.result(job_id, home)["files"]
    with pytest.raises(OSError):
        agent.file_bytes(job_id, "db.link", by=users.OPERATOR, home=home)
