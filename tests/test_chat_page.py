"""The Chat page in a real browser: start a server for the bundled SmolLM2 with one click, chat with a
streamed answer, stop an answer, and compare two endpoints side by side."""
from __future__ import annotations

import time

import pytest

from backend import chat, queue
from backend.store import open_store
from tests.conftest import shot, wait_for

BUNDLED = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The bundled SmolLM2 converted once per test session (it is registered into each test's workspace)."""
    from backend.models import ensure_bundled
    return ensure_bundled(home=tmp_path_factory.mktemp("bundled"), log=lambda *a: None)


def last_answer(page) -> str:
    msgs = page.locator(".st-key-chat_messages [data-testid='stChatMessage']")
    return msgs.last.inner_text() if msgs.count() else ""


@pytest.mark.slow
@pytest.mark.browser
def test_chat_page_streams_stops_and_compares(home, smollm2, page):
    open_store(home).put("model", BUNDLED, str(smollm2), {"source": "bundled"})
    page.goto(page.base_url + "/chat")
    page.get_by_text("No model server is running").wait_for()

    # one click starts a serve job; the page follows it until the endpoint is live
    page.locator(".st-key-chat_serve_go button").click()
    page.locator(".st-key-chat_starting").wait_for(timeout=30_000)
    page.locator(".st-key-chat_pick").wait_for(timeout=240_000)
    ep = chat.endpoints(home)[0]
    assert ep["source"] == BUNDLED and ep["device"] == "cpu"

    page.locator(".st-key-chat_max_tokens input").fill("12")
    page.locator(".st-key-chat_max_tokens input").press("Enter")
    box = page.locator(".st-key-chat_input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    # streaming: the answer grows while the Stop button is up
    page.locator(".st-key-chat_stop").wait_for(timeout=60_000)
    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and page.locator(".st-key-chat_stop").count():
        seen.add(last_answer(page))
        time.sleep(0.05)
    assert len([s for s in seen if s.strip()]) >= 2, f"no streaming seen: {seen}"
    page.get_by_text("first token after").wait_for(timeout=30_000)
    assert "Paris" in page.locator(".st-key-chat_messages").inner_text() or len(last_answer(page)) > 5
    shot(page, "chat")

    # stop: a long answer is cut off, what arrived is kept, and it stops growing
    page.locator(".st-key-chat_max_tokens input").fill("400")
    page.locator(".st-key-chat_max_tokens input").press("Enter")
    box.fill("Write a long story about a cat.")
    box.press("Enter")
    page.locator(".st-key-chat_stop").wait_for(timeout=60_000)
    wait_for(lambda: len(last_answer(page)) > 20, 60, 0.1, "some of the answer to stream")
    page.locator(".st-key-chat_stop button").click()
    page.get_by_text("Stopped: the answer so far is kept.").wait_for(timeout=30_000)
    kept = page.locator(".st-key-chat_messages").inner_text()
    time.sleep(2)
    assert page.locator(".st-key-chat_messages").inner_text() == kept

    # compare: the served endpoint and the same server added as an external URL, side by side
    page.locator(".st-key-chat_max_tokens input").fill("12")
    page.locator(".st-key-chat_max_tokens input").press("Enter")
    page.get_by_text("Add an external OpenAI-compatible URL").click()
    page.locator(".st-key-chat_ext_url input").fill(ep["url"])
    page.locator(".st-key-chat_ext_key input").fill("sk-not-logged")
    page.locator(".st-key-chat_ext_model input").fill(ep["model"])     # transformers serve lists cached hub models only
    page.get_by_role("button", name="Check and add").click()
    page.get_by_text("(external)").first.wait_for()
    page.get_by_role("tab", name="Compare").click()
    page.locator(".st-key-chat_cmp_right").click()
    page.get_by_role("option", name="(external)").click()
    page.locator(".st-key-chat_cmp_prompt textarea").fill("Name a color.")
    page.get_by_role("button", name="Send to both").click()
    left, right = page.locator(".st-key-compare_left"), page.locator(".st-key-compare_right")
    try:
        _wait_both(page, left, right, ep)
    except AssertionError:
        shot(page, "chat-compare-failed")
        raise
    box_l, box_r = left.bounding_box(), right.bounding_box()
    assert box_r["x"] > box_l["x"] + box_l["width"] / 2 and abs(box_r["y"] - box_l["y"]) < 5
    shot(page, "chat-compare")
    _rest(home, ep)


def _wait_both(page, left, right, ep):
    wait_for(lambda: len(left.inner_text()) > len(ep["name"]) + 2 and len(right.inner_text()) > 20
             and not page.locator(".st-key-chat_cmp_stop").count(), 120, 0.2, "both answers")


def _rest(home, ep):
    # the key stayed in the browser session: not in the store, the job folder or the app's log
    assert "sk-not-logged" not in (home / "workbench.db").read_bytes().decode("latin-1")
    assert "sk-not-logged" not in (home / "streamlit.log").read_text(errors="replace")
    queue.cancel(ep["job_id"], home)
    wait_for(lambda: not chat.endpoints(home), 30, 0.2, "the endpoint to go away")
