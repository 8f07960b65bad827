"""The Chat page in a real browser: start a server for the bundled SmolLM2 with one click, chat with a
streamed answer, stop an answer, and compare two endpoints side by side; then the faults (over-long
prompts, bad URLs and keys, an endpoint dying mid-answer), multi-turn Compare and two sessions at once,
against a fake OpenAI server and the tiny model."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from backend.access import users
from backend.pipeline import chat
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import endpoint_of, free_port, pick, shot, wait_for
from tests.fixtures.fake_openai import KEY, FakeOpenAI

BUNDLED = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The bundled SmolLM2 converted once per test session (it is registered into each test's workspace)."""
    from backend.workspace.models import ensure_bundled
    return ensure_bundled(home=tmp_path_factory.mktemp("bundled"), log=lambda *a: None)


def last_answer(page) -> str:
    msgs = page.locator(".st-key-chat_messages [data-testid='stChatMessage']")
    return msgs.last.inner_text() if msgs.count() else ""


@pytest.mark.slow
@pytest.mark.browser
def test_chat_page_streams_stops_and_compares(home, smollm2, page):
    open_store(home).put("model", BUNDLED, str(smollm2), {"source": "bundled"}, owner="local")
    page.goto(page.base_url + "/chat")
    page.get_by_text("No model server is running").wait_for()

    # one click starts a serve job; the page follows it until the endpoint is live
    page.locator(".st-key-chat_serve_go button").click()
    page.locator(".st-key-chat_starting").wait_for(timeout=30_000)
    page.locator(".st-key-chat_pick").wait_for(timeout=240_000)
    ep = chat.endpoints(home, by=users.OPERATOR)[0]
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
    page.get_by_text("refused the API key (401)").wait_for()         # our servers answer only with their own key
    page.locator(".st-key-chat_ext_key input").fill(ep["api_key"])
    page.get_by_role("button", name="Check and add").click()
    page.get_by_text("(external)").first.wait_for()
    page.get_by_role("tab", name="Compare").click()
    pick(page, "chat_cmp_right", "(external)", exact=False)
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
    assert ep["api_key"] not in (home / "streamlit.log").read_text(errors="replace")
    queue.cancel(ep["job_id"], home, by=users.OPERATOR)
    wait_for(lambda: not chat.endpoints(home, by=users.OPERATOR), 30, 0.2, "the endpoint to go away")


# -- faults, multi-turn Compare and two sessions: the fake server, and the tiny model where a real one counts --
@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def add_external(page, url: str, key: str, model: str = "") -> None:
    page.locator(".st-key-chat_ext_url input").fill(url)
    page.locator(".st-key-chat_ext_key input").fill(key)
    page.locator(".st-key-chat_ext_model input").fill(model)
    page.get_by_role("button", name="Check and add").click()


def send(page, text: str) -> None:
    box = page.locator(".st-key-chat_input textarea")
    box.fill(text)
    box.press("Enter")


def messages(page, where: str = ".st-key-chat_messages"):
    return page.locator(f"{where} [data-testid='stChatMessage']")


def compare(page, text: str) -> None:
    page.locator(".st-key-chat_cmp_prompt textarea").fill(text)
    page.get_by_role("button", name="Send to both").click()


@pytest.mark.slow
@pytest.mark.browser
def test_chat_faults_multi_turn_compare_and_two_sessions(home, tiny_model, fake, browser, page):
    # a real server for the context check comes up while the fake-server cases run
    open_store(home).put("model", "tiny", str(tiny_model), {"source": "test"}, owner="local")
    job_id = queue.submit("serve", {"model": "tiny", "name": "tiny-ep"}, home=home, owner="local")
    page.goto(page.base_url + "/chat")
    page.get_by_text("Add an external OpenAI-compatible URL").click()

    # bad URL and bad key: sentences, nothing added
    add_external(page, f"http://127.0.0.1:{free_port()}", "some-key")
    page.get_by_text("cannot reach http://127.0.0.1").wait_for()
    add_external(page, fake.url, "wrong-key")
    page.get_by_text("refused the API key (401)").wait_for()
    add_external(page, fake.url, KEY, "fake-model")
    page.get_by_text("Added fake-model @").wait_for()
    add_external(page, fake.url, KEY, "other-model")
    page.get_by_text("Added other-model @").wait_for()
    # the endpoint list is settled before any selectbox is used (a new option could reset a pick)
    endpoint_of(home, job_id, timeout=240)
    page.locator(".st-key-chat_max_tokens input").fill("8")
    page.locator(".st-key-chat_max_tokens input").press("Enter")        # also a rerun: tiny-ep is listed
    page.locator(".st-key-chat_endpoints").get_by_text("tiny-ep").wait_for()

    # chat: a normal turn, then the endpoint dies mid-answer: the partial answer stays, with the reason
    pick(page, "chat_pick", "fake-model @", exact=False)
    send(page, "First chat question")
    page.locator(".st-key-chat_messages").get_by_text("fake-model answer 1: First chat question").wait_for()
    send(page, "Now go dying")
    wait_for(lambda: messages(page).count() == 4 and not page.locator(".st-key-chat_stop").count(), 30, 0.1,
             "the dying answer to end")
    assert "Hello there" in messages(page).last.inner_text()
    assert "the partial answer is kept" in messages(page).last.inner_text()

    # two browser sessions chat at once and both get their answer
    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(page.base_url + "/chat")
        other.get_by_text("Add an external OpenAI-compatible URL").click()
        add_external(other, fake.url, KEY, "fake-model")
        other.get_by_text("Added fake-model @").wait_for()
        pick(other, "chat_pick", "fake-model @", exact=False)
        other.locator(".st-key-chat_input textarea").fill("Session two question")
        page.locator(".st-key-chat_input textarea").fill("Session one question")
        other.locator(".st-key-chat_input textarea").press("Enter")
        page.locator(".st-key-chat_input textarea").press("Enter")
        other.locator(".st-key-chat_messages").get_by_text("answer 1: Session two question").wait_for()
        page.locator(".st-key-chat_messages").get_by_text("answer 3: Session one question").wait_for()
    finally:
        other.close()

    # compare over two turns: each endpoint gets its own column's history
    page.get_by_role("tab", name="Compare").click()
    pick(page, "chat_cmp_left", "fake-model @", exact=False)
    pick(page, "chat_cmp_right", "other-model @", exact=False)
    left, right = page.locator(".st-key-compare_left"), page.locator(".st-key-compare_right")
    for turn, text in ((1, "First question"), (2, "Second question")):
        compare(page, text)
        left.get_by_text(f"fake-model answer {turn}: {text}").wait_for()
        right.get_by_text(f"other-model answer {turn}: {text}").wait_for()
        page.locator(".st-key-chat_cmp_stop").wait_for(state="detached")
    for model in ("fake-model", "other-model"):
        assert fake.sent(model)[-1] == [{"role": "user", "content": "First question"},
                                        {"role": "assistant", "content": f"{model} answer 1: First question"},
                                        {"role": "user", "content": "Second question"}]
    wait_for(lambda: messages(page, ".st-key-compare_left").count() == 4
             and messages(page, ".st-key-compare_right").count() == 4, 10, 0.1, "two turns in each column")
    page.get_by_text("Add an external OpenAI-compatible URL").click()        # fold the form away for the picture
    right.scroll_into_view_if_needed()
    shot(page, "chat-compare-turns")

    # Stop while comparing: both partial answers stay in their histories with the note
    compare(page, "Tell me a slow story")
    wait_for(lambda: "word3" in left.inner_text() and "word3" in right.inner_text(), 30, 0.1, "both to stream")
    page.locator(".st-key-chat_cmp_stop button").click()
    left.get_by_text("Stopped: the answer so far is kept.").wait_for()
    right.get_by_text("Stopped: the answer so far is kept.").wait_for()
    kept = left.inner_text(), right.inner_text()
    assert all("word3" in k and "word149" not in k for k in kept)
    page.wait_for_timeout(1000)
    assert (left.inner_text(), right.inner_text()) == kept, "the stopped answers kept growing"

    # an over-long prompt is refused before it joins any history (counted with the endpoint's tokenizer)
    pick(page, "chat_cmp_left", "tiny-ep", exact=False)
    left.get_by_text("tiny-ep").wait_for()
    kept = left.inner_text(), right.inner_text()
    compare(page, "word " * 600)
    page.get_by_text("context is 512 tokens").wait_for()
    assert (left.inner_text(), right.inner_text()) == kept
    n_sent = len(fake.requests)
    page.get_by_role("tab", name="Chat").click()
    pick(page, "chat_pick", "tiny-ep", exact=False)
    page.locator(".st-key-chat_clear button").click()
    wait_for(lambda: messages(page).count() == 0, 10, 0.1, "the chat to be cleared")
    send(page, "Hi")
    page.locator(".st-key-chat_messages").get_by_text("first token after").wait_for(timeout=60_000)
    before = page.locator(".st-key-chat_messages").inner_text()
    send(page, "word " * 600)
    page.get_by_text("context is 512 tokens").wait_for()
    assert messages(page).count() == 2 and page.locator(".st-key-chat_messages").inner_text() == before
    send(page, "Hi again")                  # the history still works
    wait_for(lambda: messages(page).count() == 4 and not page.locator(".st-key-chat_stop").count(), 60, 0.1,
             "the next turn")
    assert len(fake.requests) == n_sent

    # Clear empties both compare columns
    page.get_by_role("tab", name="Compare").click()
    page.locator(".st-key-chat_cmp_clear button").click()
    wait_for(lambda: messages(page, ".st-key-compare_left").count() == messages(page, ".st-key-compare_right").count()
             == 0, 10, 0.1, "the compare history to be cleared")
    assert KEY not in (home / "workbench.db").read_bytes().decode("latin-1")
    assert KEY not in (home / "streamlit.log").read_text(errors="replace")


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter on q_proj with random (non-zero) B, so merging changes q_proj and nothing else."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.browser
def test_start_base_plus_adapter_from_the_page(home, tiny_model, tmp_path, page):
    from safetensors.torch import load_file
    store = open_store(home)
    store.put("model", "tiny", str(tiny_model), {"source": "test"}, owner="local")
    store.put("adapter", "tiny-lora", str(make_adapter(tiny_model, tmp_path / "lora")), {"base_model": "tiny"}, owner="local")
    page.goto(page.base_url + "/chat")
    pick(page, "chat_serve_pick", "tiny + tiny-lora (adapter)")
    page.locator(".st-key-chat_serve_go button").click()
    page.locator(".st-key-chat_pick").wait_for(timeout=120_000)
    # one server (one CPU slot) serves the merged copy and, beside it, the base: compare needs no second job
    ep = chat.serve_job_endpoint(queue.list_jobs(kind="serve", home=home, by=users.OPERATOR)[0].id, home)
    base_ep = chat.base_endpoint(ep, home)
    assert ep["name"].startswith("tiny+tiny-lora") and ep["source"] == "tiny+tiny-lora"
    assert base_ep["source"] == "tiny" and base_ep["url"] == ep["url"] and base_ep["model"] == str(tiny_model)
    assert chat.serving("tiny", "tiny-lora", home=home) == ep and chat.serving("tiny", home=home) is None
    # what the server loaded is the merged copy: q_proj = base + B·A·scale, o_proj untouched
    merged = load_file(home / "jobs" / str(ep["job_id"]) / "merged" / "model.safetensors")
    base = load_file(Path(tiny_model) / "model.safetensors")
    lora = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    a, b = (lora[f"base_model.model.{q[:-len('.weight')]}.lora_{x}.weight"] for x in "AB")
    assert torch_allclose(merged[q], base[q] + 2.0 * b @ a)
    assert torch_allclose(merged["model.layers.0.self_attn.o_proj.weight"], base["model.layers.0.self_attn.o_proj.weight"])
    page.locator(".st-key-chat_max_tokens input").fill("6")
    page.locator(".st-key-chat_max_tokens input").press("Enter")
    send(page, "Hello, who are you?")
    page.locator(".st-key-chat_messages").get_by_text("first token after").wait_for(timeout=60_000)
    assert messages(page).count() == 2
    # Compare opens on base (left) vs fine-tuned (right), and both answer
    page.get_by_role("tab", name="Compare").click()
    left, right = page.locator(".st-key-compare_left"), page.locator(".st-key-compare_right")
    assert base_ep["name"] in left.inner_text() and ep["name"] in right.inner_text()
    compare(page, "Hello, who are you?")
    wait_for(lambda: messages(page, ".st-key-compare_left").count() == 2
             and messages(page, ".st-key-compare_right").count() == 2
             and not page.locator(".st-key-chat_cmp_stop").count(), 60, 0.2, "both answers")
    # one server answered all: 2 warm-ups, the chat turn and the two compare requests
    wait_for(lambda: {e["requests"] for e in chat.endpoints(home, by=users.OPERATOR)} == {5}, 10, 0.2, "5 requests on both rows")
    queue.cancel(ep["job_id"], home, by=users.OPERATOR)
    wait_for(lambda: not (home / "jobs" / str(ep["job_id"]) / "merged").exists() and not chat.endpoints(home, by=users.OPERATOR), 30, 0.2,
             "the merged copy and both endpoints removed")


def torch_allclose(x, y) -> bool:
    import torch
    return torch.allclose(x, y, atol=1e-5)
