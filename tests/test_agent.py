"""The agent job: the interpreter's limits for real (a separate process: CPU, memory, wall time, output,
no network, no files outside its folder), and the real Lagent ReAct loop (lagent engine) against a
scripted OpenAI-compatible server whose answers are tool calls."""
from __future__ import annotations

import json

import pytest

from backend import engines, logs, queue
from jobs.sandbox import Limits, run_code
from tests.conftest import run_burst
from tests.fixtures.fake_openai import KEY, FakeOpenAI


def test_interpreter_limits_end_with_a_sentence(tmp_path):
    folder = tmp_path / "files"
    limits = Limits(cpu_s=1, memory_mb=256, wall_s=20, output_kb=1)
    assert run_code("print(6 * 7)", folder, limits) == {"ok": True, "output": "42\n", "error": None, "files": []}
    assert run_code("while True: pass", folder, limits)["error"].startswith("stopped: the code used more than 1 s of CPU")
    assert run_code("import time; time.sleep(60)", folder, Limits(wall_s=2))["error"] == \
        "stopped: the code ran longer than 2 s of wall time"
    assert run_code("x = bytearray(2 * 1024**3)", folder, limits)["error"] == \
        "stopped: the code used more than 256 MB of memory"
    assert "no network access" in run_code("import socket; socket.create_connection(('1.1.1.1', 80), 3)",
                                           folder, limits)["error"]
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    got = run_code(f"print(open({str(outside)!r}).read())", folder, limits)
    assert "only use files inside its folder" in got["error"] and "secret\n" not in got["output"]
    assert "may not start other programs" in run_code("import os; os.system('ls')", folder, limits)["error"]
    assert run_code("print('x' * 5000)", folder, limits)["output"].endswith("[output cut at 1 KB]")
    assert run_code("open('t.csv', 'w').write('a,b\\n1,2\\n')", folder, limits)["files"] == ["t.csv"]


def test_agent_refused_without_a_target_or_the_engine(home):
    with pytest.raises(queue.SubmitError, match="name either a live endpoint or an outside URL"):
        queue.submit("agent", {"prompt": "hi"}, home=home)
    with pytest.raises(queue.SubmitError, match="no live endpoint named 'gone'"):
        queue.submit("agent", {"prompt": "hi", "endpoint": "gone"}, home=home)
    with pytest.raises(queue.SubmitError, match="not an http"):
        queue.submit("agent", {"prompt": "hi", "url": "ftp://x", "model": "m"}, home=home)


STEPS = [
    'Thought: I compute it and draw it.\nAction: PythonSandbox\nAction Input: {"command": '
    '"import matplotlib.pyplot as plt\\nprint(sum(range(10)))\\nplt.plot(range(10))\\nplt.savefig(\'plot.png\')"}\n',
    'Thought: and loop forever.\nAction: PythonSandbox\nAction Input: {"command": "while True: pass"}\n',
    "Thought: 45 it is.\nFinal Answer: the sum is 45",
]


@pytest.mark.slow
def test_lagent_loop_runs_the_interpreter_against_a_scripted_server(home):
    if not engines.installed("lagent"):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    fake = FakeOpenAI(script=STEPS)
    try:
        job_id = queue.submit("agent", {"url": fake.url + "/v1", "model": "fake-model", "prompt": "Sum 0..9, plot it",
                                        "cpu_s": 2, "wall_s": 60}, home=home, secrets={"OPENAI_API_KEY": KEY})
        run_burst(home, timeout=300)
    finally:
        fake.close()
    job = queue.get(job_id, home)
    assert job["state"] == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    result = logs.result(job_id, home)
    assert result["answer"].strip() == "the sum is 45" and result["steps"] == 2 and result["files"] == ["plot.png"]
    trace = json.loads((home / "jobs" / str(job_id) / "artifacts" / "trace.json").read_text())
    tools = [s for s in trace if s["type"] == "tool"]
    assert tools[0]["output"] == "45\n" and tools[1]["error"].startswith("stopped: the code used more than 2 s")
    assert (home / "jobs" / str(job_id) / "artifacts" / "files" / "plot.png").stat().st_size > 1000
    # the model saw the observations: the second request carries the first tool's output
    assert "45" in json.dumps(fake.requests[1]["messages"])
