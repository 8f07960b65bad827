"""The serve job through a real worker on the tiny model: ready after a health check, streamed answers,
concurrent clients, cancel removes the endpoint and the server; bad inputs are refused clearly."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import endpoint_of, wait_for
from tests.fixtures.fake_openai import FakeOpenAI


def answer(ep: dict, prompt: str = "Hello, who are you?", **kw) -> tuple[str, dict]:
    stats: dict = {}
    text = "".join(chat.stream_chat(ep, chat.build_messages([], prompt), temperature=0.0, max_tokens=8,
                                    stats=stats, by=users.OPERATOR, home=defaults.home(), **kw))
    return text, stats


@pytest.fixture
def tiny_registered(home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), {"source": "test"}, owner="local")
    return "tiny"


@pytest.mark.slow
def test_serve_answers_streams_and_cancel_cleans_up(home, worker, tiny_registered):
    job_id = queue.submit("serve", {"model": "tiny", "name": "tiny-ep"}, home=home, owner="local")
    ep = endpoint_of(home, job_id)
    assert ep["name"] == "tiny-ep" and ep["engine"] == "transformers" and ep["device"] == "cpu"
    assert ep["url"].startswith("http://127.0.0.1:") and ep["context_len"] == 512

    text, stats = answer(ep)
    assert stats["tokens"] >= 1 and stats["finish_reason"] in ("stop", "length") and stats["ttft_s"] is not None
    deltas = list(chat.stream_chat(ep, chat.build_messages([], "Hi", system="Be brief."), max_tokens=6, by=users.OPERATOR, home=home))
    assert len(deltas) >= 2, "the answer should arrive in several deltas"
    sampled = {"".join(chat.stream_chat(ep, chat.build_messages([], "Hi"), temperature=1.5, top_p=1.0, max_tokens=8, by=users.OPERATOR, home=home))
               for _ in range(3)}
    assert len(sampled) > 1, "temperature > 0 must sample (transformers serve needs do_sample sent)"

    # two clients at once both get an answer
    results: dict = {}

    def client(i):
        try:
            results[i] = answer(ep, f"Question {i}: what is 1 + 1?")[0]
        except chat.ChatError as e:
            results[i] = e
    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert all(isinstance(results.get(i), str) for i in range(2)), results

    wait_for(lambda: (chat.endpoints(home, by=users.OPERATOR) or [{}])[0].get("requests", 0) >= 4, 10, 0.2, "requests to be counted")
    key = open_store(home).items("endpoint")[0].meta["api_key"].encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):          # the server's key is on no command line
        with contextlib.suppress(OSError):
            assert key not in cmdline.read_bytes(), cmdline

    # stop: the endpoint goes away and the server's process group is gone
    pid = queue.get(job_id, home, by=users.OPERATOR).pid
    queue.cancel(job_id, home, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 30, 0.2, "the job to be cancelled")
    assert chat.endpoints(home, by=users.OPERATOR) == [] and open_store(home).items("endpoint") == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(chat.ChatError, match="cannot reach"):
        answer(ep)


def test_bad_inputs_are_refused_at_submit(home, tiny_registered):
    with pytest.raises(queue.SubmitError, match="no model named 'nope'"):
        queue.submit("serve", {"model": "nope"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="no adapter named"):
        queue.submit("serve", {"model": "tiny", "adapter": "missing"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="name a model"):
        queue.submit("serve", {}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="CUDA GPUs only"):
        queue.submit("serve", {"model": "tiny", "engine": "lmdeploy"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="no GPU"):
        queue.submit("serve", {"model": "tiny", "device": "cuda"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="port: Extra inputs"):
        queue.submit("serve", {"model": "tiny", "port": 80}, home=home, owner="local")


def test_chat_errors_without_a_server(home, tiny_model):
    ep = {"name": "gone", "url": "http://127.0.0.1:9/v1", "model": "m", "context_len": 512,
          "tokenizer": str(tiny_model / "tokenizer.json")}
    with pytest.raises(chat.ChatError, match="empty"):
        list(chat.stream_chat(ep, chat.build_messages([], "   "), by=users.OPERATOR, home=home))
    with pytest.raises(chat.ChatError, match="context is 512 tokens"):
        list(chat.stream_chat(ep, chat.build_messages([], "word " * 600), max_tokens=16, by=users.OPERATOR, home=home))
    with pytest.raises(chat.ChatError, match="cannot reach"):
        list(chat.stream_chat(ep, chat.build_messages([], "hi"), by=users.OPERATOR, home=home))
    with pytest.raises(chat.ChatError, match="not an http"):
        chat.external("ftp://example")
    with pytest.raises(chat.ChatError, match="cannot reach"):
        chat.external("http://127.0.0.1:9", api_key="sk-secret")


def test_transcripts():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "note": "stopped"}]
    md = chat.transcript_markdown(msgs, {"name": "e", "engine": "transformers", "device": "cpu", "model": "m"},
                                  {"temperature": 0.7})
    assert "## user" in md and "hello" in md and "> stopped" in md and "temperature: 0.7" in md
    import json
    assert json.loads(chat.transcript_json(msgs))["messages"][1]["content"] == "hello"


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK", "1")          # an outside URL, here on loopback
    f = FakeOpenAI()
    yield f
    f.close()


def test_external_key_check_and_death_mid_answer(fake, capsys):
    with pytest.raises(chat.ChatError, match="refused the API key"):
        chat.external(fake.url, api_key="wrong-key")
    ep = chat.external(fake.url, api_key="right-key")
    assert ep["model"] == "fake-model" and ep["url"] == fake.url + "/v1" and "right-key" not in str(ep)
    assert ep["name"] != chat.external(fake.url, api_key="right-key", model="other-model")["name"]
    with pytest.raises(chat.ChatError, match="refused the API key"):
        list(chat.stream_chat(ep, chat.build_messages([], "hi"), api_key="wrong-key", by=users.OPERATOR, home=defaults.home()))

    # a normal answer finishes; the next turn carries the history
    stats: dict = {}
    first = "".join(chat.stream_chat(ep, chat.build_messages([], "hi"), api_key="right-key", stats=stats, by=users.OPERATOR, home=defaults.home()))
    assert first == "fake-model answer 1: hi" and stats["finish_reason"] == "stop"
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first, "note": "x"}]
    assert "".join(chat.stream_chat(ep, chat.build_messages(history, "again"), api_key="right-key", by=users.OPERATOR, home=defaults.home())) \
        == "fake-model answer 2: again"
    assert fake.sent("fake-model")[-1] == [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": first},
                                           {"role": "user", "content": "again"}]

    got = []
    with pytest.raises(chat.ChatError, match="partial answer is kept") as e:
        for d in chat.stream_chat({**ep, "model": "dying-model"}, chat.build_messages([], "hi"), api_key="right-key", by=users.OPERATOR, home=defaults.home()):
            got.append(d)
    assert "".join(got) == e.value.partial == "Hello there"
    out = capsys.readouterr()
    assert "right-key" not in out.out + out.err


def test_check_prompt_refuses_before_sending(tiny_model):
    ep = {"name": "tiny", "url": "http://127.0.0.1:9/v1", "model": "m", "context_len": 512,
          "tokenizer": str(tiny_model / "tokenizer.json")}
    with pytest.raises(chat.ChatError) as e:
        chat.check_prompt(ep, chat.build_messages([], " \n"), 16)
    assert e.value.key == "chat.empty"
    with pytest.raises(chat.ChatError) as e:
        chat.check_prompt(ep, chat.build_messages([], "word " * 600), 16)
    assert e.value.key == "chat.too_long" and e.value.fmt["limit"] == 512 and e.value.fmt["n"] > 512
    chat.check_prompt(ep, chat.build_messages([], "hi"), 16)
    chat.check_prompt({**ep, "tokenizer": None}, chat.build_messages([], "word " * 600), 16)   # unknown: the server decides


@pytest.mark.slow
def test_continuous_batching_sized_from_free_memory_answers_8_clients(home, worker, tiny_registered):
    """The CB cache is sized from the memory free when the server starts (transformers' own default asked
    60% of total RAM and died at the first request on a busy machine): the server comes up, says its
    budget, and answers 8 clients at once; a cache asked beyond the memory fails with a sentence."""
    import psutil
    job_id = queue.submit("serve", {"model": "tiny", "continuous_batching": True}, home=home, owner="local")
    ep = endpoint_of(home, job_id, timeout=300)
    assert ep["continuous_batching"] and 0 < ep["kv_cache_gb"] <= 0.25 * psutil.virtual_memory().total / 2**30
    results: dict = {}

    def client(i):
        try:
            results[i] = answer(ep, f"Question {i}: what is 1 + {i}?")[1]["tokens"]
        except chat.ChatError as e:
            results[i] = e
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(180) for t in threads]
    assert [results.get(i) for i in range(8)] and all(isinstance(results.get(i), int) and results[i] >= 1
                                                     for i in range(8)), results
    queue.cancel(job_id, home, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 30, 0.2, "the job to be cancelled")

    job_id = queue.submit("serve", {"model": "tiny", "continuous_batching": True, "cb_blocks": 10**7,
                                    "cb_memory_share": 0.01}, home=home, owner="local")
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "failed", 300, 0.5, "the oversized cache to fail")
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.error_class == "out_of_memory" and "could not fit its KV cache" in job.error_message


def test_kv_budget_and_lmdeploy_settings():
    from backend.kinds.serve import Spec, kv_budget
    spec = Spec(model="m", continuous_batching=True, cb_memory_share=0.25)
    assert kv_budget(spec, "cpu", free=8 * 2**30, total=32 * 2**30) == (0.0625, 2 * 2**30)   # of free, not total
    assert kv_budget(spec, "cuda", free=8 * 2**30, total=80 * 2**30) == (0.25, 2 * 2**30)


def test_lmdeploy_kv_quant_is_refused_without_gpu(home, tiny_registered):
    with pytest.raises(queue.SubmitError, match="CUDA GPUs only"):
        queue.submit("serve", {"model": "tiny", "engine": "lmdeploy", "kv_quant": "int8"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="kv_quant is an LMDeploy setting"):
        queue.submit("serve", {"model": "tiny", "kv_quant": "int4"}, home=home, owner="local")


def test_lmdeploy_command_carries_kv_quant_and_cache_share(tmp_path):
    from jobs.serve import command
    from backend.kinds.serve import Spec
    cmd = command(Spec(model="m", engine="lmdeploy", kv_quant="int4", cache_max_entry_count=0.3), [tmp_path],
                  "127.0.0.1", 8000, "cuda", "m #1", False)
    assert cmd[cmd.index("--quant-policy") + 1] == "4" and cmd[cmd.index("--cache-max-entry-count") + 1] == "0.3"
    assert "--api-keys" not in cmd and "WORKBENCH_SERVER_KEY" in cmd[2]        # the key joins inside, from the env
    cmd = command(Spec(model="m", continuous_batching=True), [tmp_path], "127.0.0.1", 8000, "cpu", "m", False, 0.05)
    assert cmd[cmd.index("--cb-max-memory-percent") + 1] == "0.05" and "--cb-num-blocks" not in cmd
