"""The Agent page in a real browser, with the real worker, the real Lagent loop (lagent engine) and a scripted
OpenAI-compatible server: the interpreter computes and draws a plot that the page shows; a follow-up carries
the conversation; Stop ends a run whose code never finishes."""
from __future__ import annotations

import json

import pytest

from backend.access import users
from backend.pipeline import agent
from backend.runtime import engines, queue
from tests.conftest import pick, shot, wait_for
from tests.fixtures.fake_openai import KEY, FakeOpenAI
from tests.test_agent import ANSWER, PLOT, step

SCRIPT = [PLOT, ANSWER, step("I wait.", "import time\nwhile True: time.sleep(1)")]


def ask(page, text: str) -> None:
    box = page.locator(".st-key-agent_prompt textarea")
    box.fill(text)
    box.press("Enter")


@pytest.mark.slow
@pytest.mark.browser
def test_agent_page_computes_plots_continues_and_stops(home, page):
    if not engines.installed("lagent", home=home):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    fake = FakeOpenAI(script=SCRIPT)
    try:
        page.goto(page.base_url + "/agent")
        page.get_by_text("Add an external OpenAI-compatible URL").click()
        page.locator(".st-key-agent_ext_url input").fill(fake.url)
        page.locator(".st-key-agent_ext_key input").fill(KEY)
        page.locator(".st-key-agent_ext_model input").fill("fake-model")
        page.get_by_role("button", name="Check and add").click()
        page.get_by_text("Added ").wait_for()
        ask(page, "Sum 0..9 and plot it")

        page.locator(".st-key-agent_answer").get_by_text("the sum is 45").wait_for(timeout=180_000)
        steps = page.locator(".st-key-agent_steps")
        steps.get_by_text("I compute it and draw it.").wait_for()          # the thought
        steps.get_by_text("plt.savefig('plot.png')").wait_for()            # the tool call
        assert steps.locator("[data-testid='stCode']").nth(1).inner_text().strip() == "45"    # its observation
        first = queue.list_jobs(kind="agent", home=home, by=users.OPERATOR)[0].id
        pick(page, f"agent_file_{first}", "plot.png")                        # a file is read once opened
        img = page.locator(".st-key-agent_files img").first
        img.wait_for()
        wait_for(lambda: img.evaluate("i => i.complete && i.naturalWidth > 100"), 30, 0.2, "the plot to load")
        trace = agent.trace(first, by=users.OPERATOR, home=home)
        assert [s["type"] for s in trace["steps"]] == ["model", "tool", "model", "answer"] and trace["files"] == ["plot.png"]
        page.set_viewport_size({"width": 1400, "height": 2400})
        shot(page, "agent")
        page.set_viewport_size({"width": 1400, "height": 1000})

        ask(page, "Now wait forever")                    # a follow-up: the model gets the first turn with it
        wait_for(lambda: len(queue.list_jobs(kind="agent", home=home, by=users.OPERATOR)) == 2, 30, 0.2, "the follow-up run")
        page.locator(".st-key-agent_steps").get_by_text("I wait.").wait_for(timeout=120_000)
        sent = json.dumps(fake.requests[-1]["messages"])
        assert "Sum 0..9 and plot it" in sent and "the sum is 45" in sent
        page.locator(".st-key-agent_stop button").click()
        second = queue.list_jobs(kind="agent", home=home, by=users.OPERATOR)[0].id
        wait_for(lambda: queue.get(second, home, by=users.OPERATOR).state == "cancelled", 25, 0.2, "Stop to end the run")
        page.get_by_text(f"Run {second}: cancelled").wait_for()
    finally:
        fake.close()
