"""Knowledge bases (RAG): bad uploads each left out with a sentence (the rest indexed by the real index job),
another student's knowledge base refused, and (slow) the CPU demo: the bundled SmolLM2 answers a question about
the bundled documents wrongly alone and rightly through its knowledge-base endpoint, with the passage shown,
through the `openai` client and the Chat page's Compare."""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import openai
import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat, rag
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import endpoint_of, pick, run_burst, shot, wait_for
from tests.test_chat_page import BUNDLED, smollm2  # noqa: F401 - the converted bundled model (a fixture)

QUESTION, ANSWER = "What is the capital of Velmora?", "Tarrin"       # assets/rag/velmora.md


def encrypted_pdf() -> bytes:
    from pypdf import PdfWriter
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_bad_uploads_are_left_out_with_a_sentence_each_and_the_rest_is_indexed(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_UPLOAD_MAX_MB", "1")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes/inner.md", "The harbour of Tarrin has a red lighthouse.")
        z.writestr("../../climb.md", "written outside")
        z.writestr("/etc/absolute.md", "written outside")
    files = [("good.md", "Velmora's currency is the tessel.\n".encode()), ("empty.txt", b""),
             ("big.txt", b"a" * (2 * 2**20)), ("latin1.txt", "caf\xe9 cr\xe8me ".encode("latin-1") * 3),
             ("locked.pdf", encrypted_pdf()), ("broken.pdf", b"%PDF-1.4 not really"),
             ("zh.txt", "青岚镇最有名的小吃是桂花糯米糍。".encode("gb18030")),          # a Windows Chinese file
             ("docs.zip", archive.getvalue())]
    folder, problems = rag.save_upload(files, "ann", home)
    assert sorted(p.key for p in problems) == ["err.rag.too_big", "err.rag.zip_outside", "err.rag.zip_outside"]
    assert not (home / "documents" / "climb.md").exists() and not list(home.rglob("absolute.md"))
    units, problems = rag.read_folder(folder)
    assert {p.key: p.fields["name"] for p in problems} == {
        "err.rag.empty": "empty.txt", "err.rag.encoding": "latin1.txt", "err.rag.pdf_encrypted": "locked.pdf",
        "err.rag.unreadable": "broken.pdf"}
    for p in problems:          # a sentence in each language
        assert p.fields["name"] in p.text("zh") and p.text("zh") != p.text("en")
    assert sorted(u["source"] for u in units) == ["good.md", "notes/inner.md", "zh.txt"]

    # the real index job: what could be read becomes a knowledge base owned by the job's owner
    job_id = queue.submit("index", {"name": "mine", "folder": str(folder.relative_to(home / "documents"))},
                          owner="ann", home=home)
    run_burst(home)
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    kb = open_store(home).get("kb", "mine")
    assert kb.owner == "ann" and kb.meta["documents"] == 3 and kb.meta["chunks"] >= 3 and len(kb.meta["left_out"]) == 4
    hits = rag.retrieve(rag.load(kb.path, 2), "青岚镇最有名的小吃是什么？")
    assert hits[0]["source"] == "zh.txt" and "桂花糯米糍" in hits[0]["text"] and hits[0]["line"] == 1
    assert "left out: locked.pdf is an encrypted PDF" in (home / "jobs" / str(job_id) / "run.log").read_text()

    # refused before queueing: a folder outside documents/, an overlap as large as a passage
    for spec, key in [({"name": "x", "folder": "../jobs"}, "err.rag.no_folder"),
                      ({"name": "x", "folder": "demo", "chunk_size": 64, "chunk_overlap": 64}, "err.rag.overlap")]:
        with pytest.raises(queue.SubmitError) as e:
            queue.submit("index", spec, owner="ann", home=home)
        assert e.value.key == key


def test_another_students_knowledge_base_is_refused_and_audited(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    for name, role in (("ann", "student"), ("bob", "student"), ("teach", "instructor")):
        users.add(name, role, home=home)
    store = open_store(home)
    store.put("kb", "ann-notes", str(home), {"chunks": 1}, owner="ann")
    store.put("kb", "class-notes", str(home), {"chunks": 1}, owner="teach")
    assert [e.name for e in rag.list_kbs(home, "bob")] == ["class-notes"]
    with pytest.raises(rag.RagRefused) as e:
        rag.check_kb("ann-notes", "bob", home)
    assert "ann-notes" in e.value.text("zh")
    with pytest.raises(queue.Refused) as e:
        queue.submit("rag_serve", {"kb": "ann-notes", "endpoint": "any"}, owner="bob", home=home)
    assert e.value.key == "err.registry.not_yours" and "kb ann-notes" in str(e.value)   # the one use rule at submit
    refusals = users.audit_log("refused", home=home)
    assert len(refusals) == 2 and all(r["actor"] == "bob" and r["target"] == "kb ann-notes" for r in refusals)
    for who, kb in (("ann", "ann-notes"), ("bob", "class-notes"), ("teach", "ann-notes")):    # theirs, the class's
        with pytest.raises(queue.SubmitError) as e:
            queue.submit("rag_serve", {"kb": kb, "endpoint": "any"}, owner=who, home=home)
        assert e.value.key == "err.rag.no_endpoint"          # past the knowledge base: there is no such model server


def demo_endpoints(home, model_path) -> tuple[dict, dict]:
    """The bundled model served, the demo documents indexed, and the two served together: (model, kb) endpoints."""
    open_store(home).put("model", BUNDLED, str(model_path), {"source": "bundled"}, owner=users.OPERATOR_NAME,
                         shared=True)
    index = queue.submit("index", {"name": "demo", "folder": "demo"}, home=home, owner="local")
    model = endpoint_of(home, queue.submit("serve", {"model": BUNDLED}, home=home, owner="local"), 300)
    wait_for(lambda: queue.get(index, home, by=users.OPERATOR).state.finished, 180, 0.2, "the index job")
    assert queue.get(index, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(index) / "run.log").read_text()
    kb = endpoint_of(home, queue.submit("rag_serve", {"kb": "demo", "endpoint": model["name"], "top_k": 2},
                                        home=home, owner="local"), 120)
    return model, kb


@pytest.mark.slow
def test_the_bundled_model_is_wrong_alone_and_right_with_retrieval(home, worker, smollm2):  # noqa: F811
    model, kb = demo_endpoints(home, smollm2)
    ask = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "temperature": 0}
    alone = openai.OpenAI(base_url=model["url"], api_key=model["api_key"]).chat.completions.create(
        model=model["model"], **ask).choices[0].message.content
    answer = openai.OpenAI(base_url=kb["url"], api_key=kb["api_key"]).chat.completions.create(model=kb["model"], **ask)
    assert ANSWER not in alone and ANSWER in answer.choices[0].message.content, (alone, answer)
    passages = answer.model_extra["passages"]
    assert passages[0]["source"] == "velmora.md" and ANSWER in passages[0]["text"] and passages[0]["line"] == 1
    # listed like any endpoint: the Chat, Agent and Evaluate pages and the gateway offer it
    assert any(e["name"] == kb["name"] and e["engine"] == "rag" for e in chat.endpoints(home, by=users.OPERATOR))

    # streamed through the backend's chat client (the Chat page's): the passages come in the last chunk
    stats: dict = {}
    text = "".join(chat.stream_chat(kb, ask["messages"], temperature=0, max_tokens=24, stats=stats, by=users.OPERATOR, home=home))
    assert ANSWER in text and stats["passages"] == passages
    with pytest.raises(openai.AuthenticationError):         # its own key only
        openai.OpenAI(base_url=kb["url"], api_key="wrong", max_retries=0).models.list()


@pytest.mark.slow
def test_the_bundled_model_evaluated_with_and_without_retrieval_passes_the_rag_lab(home, worker, smollm2):  # noqa: F811
    """The CPU demo's question set asked of SmolLM2 alone and through the demo knowledge base (real serve, index,
    rag_serve and rag_eval jobs): retrieval fixes questions it can't know, and the RAG lab's check passes on it."""
    from backend.pipeline import labs
    from backend.runtime import logs
    from backend.workspace import datasets
    datasets.ensure_samples(home)
    model, kb = demo_endpoints(home, smollm2)
    job = queue.submit("rag_eval", {"endpoint": kb["name"], "dataset": "rag_demo_qa"}, home=home, owner="local")
    wait_for(lambda: queue.get(job, home, by=users.OPERATOR).state.finished, 600, 0.5, "the rag_eval job")
    assert queue.get(job, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(job) / "run.log").read_text()
    res = logs.result(job, home)
    s, first = res["summary"], res["items"][0]
    print(json.dumps(s), *[(it["question"], it["alone"], it["rag"], it["hit"]) for it in res["items"]], sep="\n")
    assert first["question"] == QUESTION and not first["alone_correct"] and first["rag_correct"] and first["hit"]
    assert s["questions"] == 8 and s["alone_accuracy"] <= 25 and s["rag_accuracy"] >= s["alone_accuracy"] + 25
    assert s["hit_rate"] >= 75
    result = labs.run("rag", queue.get(job, home, by=users.OPERATOR).owner, home)
    assert result["passed"], result
    assert result["checks"][0]["seen"]["passage"].endswith(" · line 1")


@pytest.mark.slow
@pytest.mark.browser
def test_compare_on_the_chat_page_shows_the_answer_with_and_without_retrieval(home, smollm2, page):  # noqa: F811
    model, kb = demo_endpoints(home, smollm2)
    page.goto(page.base_url + "/knowledge")
    page.locator(".st-key-kb_list").get_by_text("demo", exact=True).wait_for(timeout=60_000)
    page.goto(page.base_url + "/chat")
    page.locator(".st-key-chat_temperature").get_by_role("slider").press("Home")     # greedy: the same answer each time
    page.locator(".st-key-chat_max_tokens input").fill("24")
    page.locator(".st-key-chat_max_tokens input").press("Enter")
    page.get_by_role("tab", name="Compare").click()
    pick(page, "chat_cmp_left", model["name"])
    pick(page, "chat_cmp_right", kb["name"])
    page.locator(".st-key-chat_cmp_prompt textarea").fill(QUESTION)
    page.get_by_role("button", name="Send to both").click()
    left, right = page.locator(".st-key-compare_left"), page.locator(".st-key-compare_right")
    wait_for(lambda: "velmora.md · line 1" in right.inner_text() and len(left.inner_text()) > len(model["name"]) + 20
             and not page.locator(".st-key-chat_cmp_stop").count(), 180, 0.3, "both answers and the passages")
    right.get_by_text("velmora.md · line 1").scroll_into_view_if_needed()     # the answers and the passage
    shot(page, "rag-compare")
    assert ANSWER not in left.inner_text().replace(QUESTION, "")
    assert ANSWER in right.inner_text().split("Passages used")[0].replace(QUESTION, "")


@pytest.mark.slow
def test_an_agent_consults_a_knowledge_base_through_its_endpoint(home, worker):
    """The real Lagent agent job pointed at a knowledge-base endpoint: each question it sends is answered with
    the retrieved passages in the prompt (the model behind is a scripted server)."""
    from backend.runtime import engines
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.test_agent import step
    from tests.test_gateway import placeholder
    if not engines.installed("lagent", home=home):
        pytest.skip("the lagent engine is not installed (./workbench test installs it)")
    fake = FakeOpenAI(script=[step("I look it up.", "print('Tarrin'.upper())"),
                              "Thought: the notes say so.\nFinal Answer: Tarrin"])
    try:
        placeholder(home, "local", "scripted", fake)
        index = queue.submit("index", {"name": "demo", "folder": "demo"}, home=home, owner="local")
        wait_for(lambda: queue.get(index, home, by=users.OPERATOR).state.finished, 180, 0.2, "the index job")
        kb = endpoint_of(home, queue.submit("rag_serve", {"kb": "demo", "endpoint": "scripted", "top_k": 2},
                                            home=home, owner="local"), 120)
        job = queue.submit("agent", {"endpoint": kb["name"], "prompt": QUESTION, "max_turns": 4}, home=home, owner="local")
        wait_for(lambda: queue.get(job, home, by=users.OPERATOR).state.finished, 300, 0.5, "the agent job")
    finally:
        fake.close()
    assert queue.get(job, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(job) / "run.log").read_text()
    from backend.runtime import logs
    assert logs.result(job, home)["answer"].strip() == "Tarrin"
    sent = [json.dumps(r["messages"], ensure_ascii=False) for r in fake.requests]
    assert len(sent) == 2 and all("capital of Velmora is Tarrin" in s for s in sent)     # retrieved for each turn


def test_a_question_set_is_evaluated_with_and_without_retrieval_and_the_rag_lab_reads_it(home, worker, monkeypatch):
    """The real index, rag_serve and rag_eval jobs (the model behind is the fake server, which says back its
    prompt: alone the question, with retrieval the passages too): accuracy each way, the hit rate, an eval entry
    of the owner's, and the RAG lab's check passing on it, for ann only."""
    from backend.pipeline import labs, rag_eval
    from backend.runtime import logs
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.test_gateway import placeholder
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    for name in ("ann", "bob"):
        users.add(name, "student", home=home)
    fake = FakeOpenAI()
    try:
        placeholder(home, "ann", "ann-model", fake)                 # the lab's step 2 (serve), done by hand
        index = labs.start_step("rag", 0, "ann", home=home)          # the lab's steps, prefilled for ann
        assert queue.get(index, home, by=users.OPERATOR).spec.items() >= {"name": "demo-ann", "folder": "demo"}.items()
        wait_for(lambda: queue.get(index, home, by=users.OPERATOR).state.finished, 180, 0.2, "the index job")
        serving = labs.start_step("rag", 2, "ann", home=home)
        assert queue.get(serving, home, by=users.OPERATOR).spec.items() >= {"kb": "demo-ann", "endpoint": "ann-model", "top_k": 2}.items()
        kb = endpoint_of(home, serving, 120)
        assert [e["name"] for e in rag_eval.kb_endpoints(home, "ann")] == [kb["name"]]
        assert rag_eval.kb_endpoints(home, "bob") == [] and "rag_demo_qa" in rag_eval.qa_datasets(home, "bob")
        with pytest.raises(queue.Refused):                  # another student's knowledge-base endpoint
            queue.submit("rag_eval", {"endpoint": kb["name"], "dataset": "rag_demo_qa"}, owner="bob", home=home)
        with pytest.raises(queue.SubmitError) as e:         # a model endpoint is no knowledge-base endpoint
            queue.submit("rag_eval", {"endpoint": "ann-model", "dataset": "rag_demo_qa"}, owner="ann", home=home)
        assert e.value.key == "err.rag_eval.no_kb_endpoint" and "ann-model" in e.value.text("zh")
        job = labs.start_step("rag", 3, "ann", home=home)
        assert queue.get(job, home, by=users.OPERATOR).spec.items() >= {"endpoint": kb["name"], "dataset": "rag_demo_qa"}.items()
        wait_for(lambda: queue.get(job, home, by=users.OPERATOR).state.finished, 180, 0.3, "the rag_eval job")
    finally:
        fake.close()
    assert queue.get(job, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(job) / "run.log").read_text()
    res = rag_eval.result(job, home, "ann")
    s = res["summary"]
    assert s["questions"] == 8 and s["alone_accuracy"] == 0.0 and s["rag_accuracy"] >= 75 and s["hit_rate"] >= 75
    assert s["fixed"] == sum(it["rag_correct"] for it in res["items"]) and s["broke"] == 0
    first = res["items"][0]
    assert first["question"] == QUESTION and not first["alone_correct"] and first["rag_correct"] and first["hit"]
    assert first["passages"][0]["source"] == "velmora.md" and ANSWER in first["passages"][0]["text"]
    rows = rag_eval.side_by_side(res)
    assert rows[0]["alone"].startswith("✗ ") and rows[0]["with_retrieval"].startswith("✓ ")
    assert rows[0]["passage"] == "velmora.md · line 1"
    entry = open_store(home).get("eval", f"rag-eval-{job}")
    assert entry.owner == "ann" and entry.meta["rag"]["kb"] == "demo-ann"
    assert {(r["model"], r["metric"]) for r in entry.meta["table"]} == {
        ("ann-model", "accuracy"), (kb["name"], "accuracy"), (kb["name"], "retrieval hit rate")}
    with pytest.raises(users.Refused):                      # bob may not read ann's run
        rag_eval.result(job, home, "bob")
    assert [r["job_id"] for r in rag_eval.runs(home, "ann")] == [job] and rag_eval.runs(home, "bob") == []
    from backend.pipeline import evaluate as ev            # and in the Evaluate page's list and comparison: ann's only
    assert [(r["job_id"], r["rag"], r["models"]) for r in ev.runs(home, "ann")] == [(job, True, [kb["name"]])]
    assert ev.runs(home, "bob") == [] and ev.result(job, home, "ann")["table"] == entry.meta["table"]

    # the RAG lab's check reads ann's evaluation (bob has none), and passes with what proved it
    check = labs.submit_check("rag", "ann", home=home)
    wait_for(lambda: queue.get(check, home, by=users.OPERATOR).state.finished, 120, 0.2, "the check")
    result = logs.result(check, home)
    assert result["passed"], result
    seen = result["checks"][0]["seen"]
    assert seen["question"] == QUESTION and seen["passage"] == "velmora.md · line 1" and ANSWER in seen["with_retrieval"]
    assert ANSWER not in seen["alone"] and seen["summary"]["alone_accuracy"] == 0.0
    assert {a["type"] for a in result["checks"][0]["artifacts"]} == {"eval", "kb"}
    mine = next(r for r in labs.status("ann", home) if r["lab"].id == "rag")
    assert mine["state"] == "passed" and mine["done"] == [True, False, True, True]     # step 2 was not the serve job
    bob = labs.run("rag", "bob", home)
    assert not bob["passed"] and "no finished evaluation of yours with and without retrieval" in str(
        labs.as_error(bob["checks"][0]["problem"]))


def test_uploaded_documents_and_indexes_count_in_the_owners_disk_quota(home, monkeypatch):
    """A student's uploads (documents/<owner>/) and the index their job wrote count in their disk use; an upload past
    the quota is refused whole, with what they use now."""
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    monkeypatch.setattr(defaults, "DISK_SIZE_CACHE_S", 0.0)          # every figure walked afresh
    users.add("ann", "student", home=home)
    before = users.disk_used("ann", home)
    folder, problems = rag.save_upload([("notes.md", b"The harbour of Tarrin has a red lighthouse.\n" * 2000)], "ann",
                                       home)
    assert not problems and users.disk_used("ann", home) - before >= 88_000
    job_id = queue.submit("index", {"name": "notes", "folder": str(folder.relative_to(home / "documents"))},
                          owner="ann", home=home)
    with_upload = users.disk_used("ann", home)
    run_burst(home)
    assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded"
    index = open_store(home).get("kb", "notes").meta["size_bytes"]
    assert users.disk_used("ann", home) >= with_upload + index        # the index, in ann's job folder
    monkeypatch.setenv("WORKBENCH_USER_DISK_QUOTA_GB", str(users.disk_used("ann", home) / 2**30 + 50_000 / 2**30))
    with pytest.raises(rag.RagRefused) as e:
        rag.save_upload([("more.md", b"x" * 100_000)], "ann", home)
    assert e.value.key == "err.users.disk_quota"


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory):
    from tests.fixtures.tiny_embedder import make_tiny_embedder
    return make_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny-embedder")


def test_a_knowledge_base_with_embeddings_from_a_registry_model(home, worker, tiny_embedder, tiny_model):
    """The real index job with ``embedding_model``: LlamaIndex's vector index over a sentence-transformers model of
    the registry (a tiny random one built offline); a passage's own text finds it. A model that is no
    sentence-transformers model is refused before queueing; BM25 stays the default."""
    store = open_store(home)
    store.put("model", "tiny-embedder", str(tiny_embedder), owner=users.OPERATOR_NAME, shared=True)
    store.put("model", "tiny-llama", str(tiny_model), owner=users.OPERATOR_NAME, shared=True)
    assert [e.name for e in rag.embedders(home, "ann")] == ["tiny-embedder"]
    with pytest.raises(queue.SubmitError) as e:
        queue.submit("index", {"name": "x", "folder": "demo", "embedding_model": "tiny-llama"}, owner="ann", home=home)
    assert e.value.key == "err.rag.not_embedder" and "modules.json" in str(e.value)
    dense = queue.submit("index", {"name": "dense", "folder": "demo", "embedding_model": "tiny-embedder",
                                   "chunk_size": 64, "chunk_overlap": 8, "hybrid": False}, owner="ann", home=home)
    hybrid = queue.submit("index", {"name": "hybrid", "folder": "demo", "embedding_model": "tiny-embedder",
                                    "chunk_size": 64, "chunk_overlap": 8}, owner="ann", home=home)
    plain = queue.submit("index", {"name": "plain", "folder": "demo", "chunk_size": 64, "chunk_overlap": 8},
                         owner="ann", home=home)
    for job_id in (dense, hybrid, plain):
        wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state.finished, 180, 0.2, "the index job")
        assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(job_id) / "run.log").read_text()
    kb, bm25 = store.get("kb", "dense"), store.get("kb", "plain")
    assert kb.meta["retrieval"] == "dense" and kb.meta["embedding_model"] == "tiny-embedder" and kb.meta["chunks"] > 6
    assert bm25.meta["retrieval"] == "bm25" and "embedding_model" not in bm25.meta
    units, _ = rag.read_folder(rag.DEMO_DIR)
    passage = next(n for n in rag.split(units, 64, 8) if "capital of Velmora" in n.get_content())
    hits = rag.retrieve(rag.load(kb.path, 3), passage.get_content())
    assert hits[0]["text"] == passage.get_content() and hits[0]["score"] == pytest.approx(1.0)
    assert len(hits) == 3 and all(h["score"] < 0.999 for h in hits[1:])
    assert hits[0]["source"] == "velmora.md" and hits[0]["line"] == passage.metadata["line"]

    # hybrid (the default with an embedding model): both lists fused by reciprocal rank, so the keyword match BM25
    # ranks first and the passage the embeddings rank first are both among its top 3, each list's order kept
    both = store.get("kb", "hybrid")
    assert both.meta["retrieval"] == "hybrid" and (Path(both.path) / rag.HYBRID_BM25).is_dir()
    question = "glass heron wings"          # words of one passage that the (random) embeddings do not rank
    keyword = rag.retrieve(rag.load(bm25.path, 3), question)[0]["text"]
    vectors = rag.retrieve(rag.load(kb.path, 50), question)       # every passage, by similarity
    fused = [h["text"] for h in rag.retrieve(rag.load(both.path, 3), question)]
    assert "glass heron" in keyword
    assert next(h["score"] for h in vectors if h["text"] == keyword) < vectors[2]["score"], "the embeddings miss it"
    firsts = {h["text"] for h in vectors if h["score"] == vectors[0]["score"]}   # the tiny embedder ties unknown words
    assert len(fused) == 3 and keyword in fused and firsts & set(fused)

    # served with a model: each question is embedded by the same model, and its passages come with the answer
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.test_gateway import placeholder
    fake = FakeOpenAI()
    try:
        placeholder(home, "ann", "ann-model", fake)
        served = endpoint_of(home, queue.submit("rag_serve", {"kb": "dense", "endpoint": "ann-model", "top_k": 2},
                                                owner="ann", home=home), 120)
        answer = openai.OpenAI(base_url=served["url"], api_key=served["api_key"]).chat.completions.create(
            model=served["model"], messages=[{"role": "user", "content": passage.get_content()}], max_tokens=8)
    finally:
        fake.close()
    assert answer.model_extra["passages"][0]["text"] == passage.get_content()
    assert passage.get_content() in fake.requests[-1]["messages"][-1]["content"]
    store.delete("model", "tiny-embedder")
    with pytest.raises(rag.RagError, match="build it again"):       # its model moved away: a sentence, not a trace
        import shutil
        shutil.move(str(tiny_embedder), str(tiny_embedder) + ".moved")
        try:
            rag.load(kb.path, 3)
        finally:
            shutil.move(str(tiny_embedder) + ".moved", str(tiny_embedder))


def test_a_reranker_reorders_the_served_passages(home, worker, tiny_model, tmp_path, monkeypatch):
    """rag_serve with ``reranker`` (a registry cross-encoder; a tiny random one built offline): the endpoint's passages
    are the top_k of 4 × top_k BM25 candidates in the order the cross-encoder scores them, with its scores. A model
    that is no cross-encoder, and another student's private one, are refused before queueing."""
    from sentence_transformers import CrossEncoder

    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.fixtures.tiny_reranker import make_tiny_reranker
    from tests.test_gateway import placeholder
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    for name in ("ann", "bob"):
        users.add(name, "student", home=home)
    store = open_store(home)
    path = make_tiny_reranker(tmp_path / "tiny-reranker")
    store.put("model", "tiny-reranker", str(path), owner=users.OPERATOR_NAME, shared=True)
    store.put("model", "bobs-reranker", str(make_tiny_reranker(tmp_path / "bob", seed=1)), owner="bob")
    store.put("model", "tiny-llama", str(tiny_model), owner=users.OPERATOR_NAME, shared=True)
    assert [e.name for e in rag.rerankers(home, "ann")] == ["tiny-reranker"]
    kb_job = queue.submit("index", {"name": "plain", "folder": "demo", "chunk_size": 64, "chunk_overlap": 8},
                          owner="ann", home=home)
    wait_for(lambda: queue.get(kb_job, home, by=users.OPERATOR).state == "succeeded", 180, 0.2, "the index job")
    fake = FakeOpenAI()
    try:
        placeholder(home, "ann", "ann-model", fake)
        for name, key in (("tiny-llama", "err.rag.not_reranker"), ("bobs-reranker", "err.registry.not_yours")):
            with pytest.raises(queue.SubmitError) as e:
                queue.submit("rag_serve", {"kb": "plain", "endpoint": "ann-model", "reranker": name}, owner="ann", home=home)
            assert e.value.key == key, e.value
        job = queue.submit("rag_serve", {"kb": "plain", "endpoint": "ann-model", "top_k": 2, "reranker": "tiny-reranker"},
                           owner="ann", home=home)
        assert queue.get(job, home, by=users.OPERATOR).asked["cpu_slots"] == 0     # light: the model server has the slot
        served = endpoint_of(home, job, 120)
        question = "What is the capital of Velmora?"
        answer = openai.OpenAI(base_url=served["url"], api_key=served["api_key"]).chat.completions.create(
            model=served["model"], messages=[{"role": "user", "content": question}], max_tokens=8)
    finally:
        fake.close()
    store_kb = store.get("kb", "plain")
    pool = rag.retrieve(rag.load(store_kb.path, 2 * rag.RERANK_POOL), question)
    scores = CrossEncoder(str(path), device="cpu").predict([(question, h["text"]) for h in pool])
    best = sorted(zip(scores, range(len(pool))), reverse=True)[:2]
    got = answer.model_extra["passages"]
    assert [p["text"] for p in got] == [pool[i]["text"] for _, i in best]
    assert [p["score"] for p in got] == [round(float(s), 3) for s, _ in best]
    assert [p["text"] for p in got] != [h["text"] for h in pool[:2]], "the cross-encoder's order, not BM25's"
    assert store.get("endpoint", served["model"]).meta["reranker"] == "tiny-reranker"


@pytest.mark.browser
def test_the_knowledge_page_evaluates_with_and_without_retrieval_side_by_side(home, page):
    """On the Knowledge page: pick the knowledge-base endpoint and the bundled question set, Evaluate;
    the real rag_eval job runs, and the page shows the accuracy alone and with retrieval, the hit rate and each
    question's two answers side by side (the model is the fake server, which says back its prompt)."""
    from backend.core import defaults
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.test_gateway import placeholder
    me = defaults.setting("USER")
    fake = FakeOpenAI()
    try:
        placeholder(home, me, "fake-model-server", fake)
        index = queue.submit("index", {"name": "demo", "folder": "demo"}, home=home, owner="local")
        wait_for(lambda: queue.get(index, home, by=users.OPERATOR).state.finished, 180, 0.2, "the index job")
        kb = endpoint_of(home, queue.submit("rag_serve", {"kb": "demo", "endpoint": "fake-model-server"}, home=home, owner="local"))
        page.goto(page.base_url + "/knowledge")
        form = page.locator(".st-key-kb_eval")
        form.locator(".st-key-kb_eval_endpoint").wait_for(timeout=60_000)
        pick(page, "kb_eval_endpoint", kb["name"], exact=False)
        pick(page, "kb_eval_dataset", "rag_demo_qa")
        form.get_by_role("button", name="Evaluate").click()
        job = wait_for(lambda: next(iter(open_store(home).jobs(kind="rag_eval", limit=1)), None), 30, 0.2,
                       "the rag_eval job queued")
        wait_for(lambda: queue.get(job.id, home, by=users.OPERATOR).state.finished, 180, 0.3, "the rag_eval job")
        assert queue.get(job.id, home, by=users.OPERATOR).state == "succeeded", (home / "jobs" / str(job.id) / "run.log").read_text()
        page.reload()
        page.locator(".st-key-kb_eval_items [data-testid='stDataFrame']").wait_for(timeout=60_000)
    finally:
        fake.close()
    text = re.sub(r"\n+", "\n", form.inner_text())
    assert "Accuracy alone (fake-model-server)\n0.0%" in text and "Accuracy with retrieval\n100.0%" in text
    assert "Retrieval hit rate\n100.0%" in text and "8 of 8 questions answered only with retrieval" in text
    page.locator(".st-key-kb_eval_items").scroll_into_view_if_needed()
    shot(page, "rag-eval")

    # the Evaluate page lists the run beside OpenCompass's: its table compares the model alone with the knowledge
    # base's endpoint, and its answers show side by side
    page.goto(page.base_url + "/evaluate")
    results = page.locator(".st-key-eval_results")
    results.locator("[data-testid='stDataFrame']").wait_for(timeout=60_000)
    page.locator(".st-key-eval_items [data-testid='stDataFrame']").wait_for(timeout=60_000)
    assert page.locator(".st-key-eval_pick input").input_value().endswith("· succeeded · demo + fake-model-server × rag_demo_qa")
    shot(page, "rag-eval-on-evaluate")


@pytest.mark.browser
def test_the_knowledge_page_builds_a_hybrid_base_and_serves_it_with_a_reranker(home, page, tmp_path):
    """On the Knowledge page: the bundled demo with an embedding model (hybrid ticked by default), Build; the base is
    listed as hybrid; served with a model endpoint and a reranker, its endpoint reranks."""
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.fixtures.tiny_embedder import make_tiny_embedder
    from tests.fixtures.tiny_reranker import make_tiny_reranker
    from tests.test_gateway import placeholder
    store = open_store(home)
    store.put("model", "tiny-embedder", str(make_tiny_embedder(tmp_path / "e")), owner=users.OPERATOR_NAME, shared=True)
    store.put("model", "tiny-reranker", str(make_tiny_reranker(tmp_path / "r")), owner=users.OPERATOR_NAME, shared=True)
    fake = FakeOpenAI()
    try:
        placeholder(home, defaults.setting("USER"), "fake-model-server", fake)
        page.goto(page.base_url + "/knowledge")
        page.locator(".st-key-kb_name input").fill("velmora-hybrid")
        page.locator(".st-key-kb_source").get_by_text("Bundled demo").click()
        pick(page, "kb_embedding", "embeddings: tiny-embedder")
        assert page.locator(".st-key-kb_hybrid input").is_checked()
        page.locator(".st-key-kb_build button").click()
        kb = wait_for(lambda: store.get("kb", "velmora-hybrid"), 180, 0.3, "the hybrid knowledge base")
        assert kb.meta["retrieval"] == "hybrid"
        page.reload()
        row = page.locator(".st-key-kb_list")
        row.get_by_text("hybrid (BM25 + embeddings)", exact=False).wait_for(timeout=60_000)
        pick(page, f"kb_model_{kb.id}", "fake-model-server")
        pick(page, f"kb_reranker_{kb.id}", "tiny-reranker")
        shot(page, "kb-hybrid-reranker")
        page.locator(f".st-key-kb_serve_{kb.id} button").click()
        served = wait_for(lambda: next((e for e in store.items("endpoint") if e.meta.get("kb") == "velmora-hybrid"),
                                       None), 120, 0.3, "the knowledge base's endpoint")
    finally:
        fake.close()
    assert served.meta["reranker"] == "tiny-reranker" and served.meta["upstream"] == "fake-model-server"
