"""The agent job: the interpreter's limits for real (a separate process: CPU, memory, wall time, output,
no network, no files outside its folder), and the real Lagent ReAct loop (lagent engine) against a
scripted OpenAI-compatible server whose answers are tool calls."""
from __future__ import annotations

import json

import pytest

from backend import agent, engines, logs, queue
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


def step(thought: str, code: str) -> str:
    """A scripted ReAct step that runs ``code`` in the interpreter."""
    return f"Thought: {thought}\nAction: PythonSandbox\nAction Input: {json.dumps({'command': code})}\n"


PLOT = step("I compute it and draw it.",
            "import matplotlib.pyplot as plt\nprint(sum(range(10)))\nplt.plot(range(10))\nplt.savefig('plot.png')")
ANSWER = "Thought: 45 it is.\nFinal Answer: the sum is 45"


@pytest.mark.slow
def test_lagent_loop_runs_the_interpreter_against_a_scripted_server(home):
    if not engines.installed("lagent"):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    secret = home / "secret.txt"
    secret.write_text("the workspace's secret")
    fake = FakeOpenAI()
    port = fake.url.rsplit(":", 1)[1]
    fake.script += [PLOT, step("and loop forever.", "while True: pass"),
                    step("a lot of memory.", "x = bytearray(2 * 1024**3)"),
                    step("call the server.", f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)"),
                    step("read outside.", f"print(open({str(secret)!r}).read())"), ANSWER]
    try:
        job_id = queue.submit("agent", {"url": fake.url + "/v1", "model": "fake-model", "prompt": "Sum 0..9, plot it",
                                        "cpu_s": 2, "memory_mb": 256, "wall_s": 60, "max_turns": 8},
                              home=home, secrets={"OPENAI_API_KEY": KEY})
        run_burst(home, timeout=300)
    finally:
        fake.close()
    job = queue.get(job_id, home)
    assert job["state"] == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    result = logs.result(job_id, home)
    assert result["answer"].strip() == "the sum is 45" and result["steps"] == 5 and result["files"] == ["plot.png"]
    trace = json.loads((home / "jobs" / str(job_id) / "artifacts" / "trace.json").read_text())
    tools = [s for s in trace if s["type"] == "tool"]
    assert tools[0]["output"] == "45\n" and tools[1]["error"].startswith("stopped: the code used more than 2 s")
    assert tools[2]["error"] == "stopped: the code used more than 256 MB of memory"
    assert "no network access" in tools[3]["error"]
    assert "only use files inside its folder" in tools[4]["error"] and "the workspace's secret" not in tools[4]["output"]
    assert (home / "jobs" / str(job_id) / "artifacts" / "files" / "plot.png").stat().st_size > 1000
    # the model read every observation: the last request carries each limit's sentence
    sent = json.dumps(fake.requests[-1]["messages"])
    assert all(s in sent for s in ("45", "more than 2 s of CPU", "256 MB", "no network", "inside its folder"))
    md = agent.trace_markdown(agent.trace(job_id, by=None, home=home))
    assert "```python\nwhile True: pass\n```" in md and md.rstrip().endswith("the sum is 45")


def test_agent_runs_are_their_owners(home):
    if not engines.installed("lagent"):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    where = {"url": "http://127.0.0.1:9/v1", "model": "m", "home": home}
    first = agent.ask("hi", by="alice", **where)
    assert [j["id"] for j in agent.runs("alice", home)] == [first] and agent.runs("bob", home) == []
    with pytest.raises(queue.Refused, match="not one of your agent runs"):
        agent.ask("more", by="bob", after=first, **where)
    second = agent.ask("more", by="alice", after=first, **where)
    assert queue.get(second, home)["spec"]["history"] == [{"role": "user", "content": "hi"}]  # unanswered: its question
