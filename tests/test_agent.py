"""The agent job: the real Lagent ReAct loop (lagent engine) against a scripted OpenAI-compatible server whose
answers are tool calls, its interpreter in the sandbox (tests/test_sandbox.py tries the escapes)."""
from __future__ import annotations

import json

import pytest

from backend.access import users
from backend.pipeline import agent
from backend.runtime import engines, logs, queue
from tests.conftest import run_burst
from tests.fixtures.fake_openai import KEY, FakeOpenAI


def test_agent_refused_without_a_target_or_the_engine(home):
    with pytest.raises(queue.SubmitError, match="name either a live endpoint or an outside URL"):
        queue.submit("agent", {"prompt": "hi"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="no live endpoint named 'gone'"):
        queue.submit("agent", {"prompt": "hi", "endpoint": "gone"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="not an http"):
        queue.submit("agent", {"prompt": "hi", "url": "ftp://x", "model": "m"}, home=home, owner="local")


def step(thought: str, code: str) -> str:
    """A scripted ReAct step that runs ``code`` in the interpreter."""
    return f"Thought: {thought}\nAction: PythonSandbox\nAction Input: {json.dumps({'command': code})}\n"


PLOT = step("I compute it and draw it.",
            "import matplotlib.pyplot as plt\nprint(sum(range(10)))\nplt.plot(range(10))\nplt.savefig('plot.png')")
ANSWER = "Thought: 45 it is.\nFinal Answer: the sum is 45"


@pytest.mark.slow
def test_lagent_loop_runs_the_interpreter_against_a_scripted_server(home):
    if not engines.installed("lagent", home=home):
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
                              home=home, secrets={"OPENAI_API_KEY": KEY}, owner="local")
        run_burst(home, timeout=300)
    finally:
        fake.close()
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    result = logs.result(job_id, home)
    assert result["answer"].strip() == "the sum is 45" and result["steps"] == 5 and result["files"] == ["plot.png"]
    trace = json.loads((home / "jobs" / str(job_id) / "artifacts" / "trace.json").read_text())
    tools = [s for s in trace if s["type"] == "tool"]
    assert tools[0]["output"] == "45\n" and tools[1]["error"].startswith("stopped: the code used more than 2 s")
    assert tools[2]["error"] == "stopped: the code used more than 256 MB of memory"
    assert "Connection refused" in tools[3]["error"]
    assert "No such file" in tools[4]["error"] and "the workspace's secret" not in tools[4]["output"]
    assert (home / "jobs" / str(job_id) / "artifacts" / "files" / "plot.png").stat().st_size > 1000
    # the model read every observation: the last request carries each limit's sentence
    sent = json.dumps(fake.requests[-1]["messages"])
    assert all(s in sent for s in ("45", "more than 2 s of CPU", "256 MB", "Connection refused", "No such file"))
    md = agent.trace_markdown(agent.trace(job_id, by=users.OPERATOR, home=home))
    assert "```python\nwhile True: pass\n```" in md and md.rstrip().endswith("the sum is 45")


def test_agent_runs_are_their_owners(home):
    if not engines.installed("lagent", home=home):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    where = {"url": "http://127.0.0.1:9/v1", "model": "m", "home": home}
    first = agent.ask("hi", by="alice", **where)
    assert [j.id for j in agent.runs("alice", home)] == [first] and agent.runs("bob", home) == []
    with pytest.raises(queue.Refused, match="not one of your agent runs"):
        agent.ask("more", by="bob", after=first, **where)
    second = agent.ask("more", by="alice", after=first, **where)
    assert queue.get(second, home, by=users.OPERATOR).spec["history"] == [{"role": "user", "content": "hi"}]  # unanswered: its question
