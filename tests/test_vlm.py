"""The vlm job through a real worker on a tiny random LLaVA model built offline: ready after a health
check, a streamed answer about an uploaded image, bad images and requests refused clearly without
ending the job, cancel removes the endpoint; models it can't run are refused at submit."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import urllib.error
import urllib.request
import zlib

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat, vlm
from backend.runtime import queue
from backend.workspace import models
from backend.core.store import open_store
from tests.conftest import endpoint_of, wait_for


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from tests.fixtures.tiny_vlm import make_tiny_llava
    return make_tiny_llava(tmp_path_factory.mktemp("tinyvlm") / "tiny-llava")


def png(w: int = 40, h: int = 30, color: str = "red") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (no need to build the pixels: the size is refused first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_image_checks():
    assert vlm.check_image(png()) == {"width": 40, "height": 30}
    with pytest.raises(vlm.VLMError, match="not an image"):
        vlm.check_image(b"hello, I am a text file", "notes.txt")
    with pytest.raises(vlm.VLMError, match="corrupt or truncated"):
        vlm.check_image(png(200, 200, "blue")[:120], "cut.png")
    with pytest.raises(vlm.VLMError, match="100 megapixels; the limit is 50"):
        vlm.check_image(png_header_only(10_000, 10_000), "huge.png")
    with pytest.raises(vlm.VLMError, match="empty"):
        vlm.check_image(b"")
    with pytest.raises(vlm.VLMError, match="at most 2"):
        vlm.check_images([png(), png(), png()], max_images=2, home=defaults.home())


def post(ep: dict, body: dict) -> tuple[int, str]:
    """A raw request to a vlm endpoint, with its API key."""
    req = urllib.request.Request(ep["url"] + "/chat", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {ep['api_key']}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_vlm_job_answers_about_images_and_cancel_cleans_up(home, worker, tiny_llava):
    open_store(home).put("model", "tiny-llava", str(tiny_llava), {"source": "test"}, owner="local")
    job_id = queue.submit("vlm", {"model": "tiny-llava", "name": "tiny-vlm", "max_images": 2}, home=home, owner="local")
    ep = endpoint_of(home, job_id, 90)
    assert ep["engine"] == "vlm" and ep["mode"] == "transformers" and ep["max_images"] == 2
    assert ep["url"].startswith("http://127.0.0.1:") and ep["context_len"] == 2048
    assert chat.endpoints(home, by=users.OPERATOR) == [], "the text chat page must not list image-text endpoints"

    # a streamed answer about an image (bytes) and one given by file path
    stats: dict = {}
    deltas = list(vlm.stream(ep, [{"role": "user", "content": "What is in this picture?", "images": [png()]}],
                             max_new_tokens=8, stats=stats, by=users.OPERATOR, home=home))
    assert "".join(deltas).strip() and len(deltas) >= 2 and stats["tokens"] >= 2 and stats["ttft_s"] is not None
    img = home / "gallery" / "uploads" / "green.png"
    img.parent.mkdir(parents=True)
    img.write_bytes(png(16, 64, "green"))
    history = [{"role": "user", "content": "Describe it.", "images": [img]},
               {"role": "assistant", "content": "".join(deltas)},
               {"role": "user", "content": "And this one?", "images": [png(50, 50, "blue")]}]
    assert "".join(vlm.stream(ep, history, max_new_tokens=4, temperature=1.0, by=users.OPERATOR, home=home))

    # bad input: refused before sending (client), and by the job itself (raw requests); the job goes on
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "bob.png").write_bytes(png())           # a file outside the gallery (another user's)
    for name in ["/etc/passwd", "datasets/bob.png", "gallery/../datasets/bob.png", str(home / "workbench.db")]:
        with pytest.raises(vlm.VLMError, match="not an image file in the workspace gallery"):
            list(vlm.stream(ep, [{"role": "user", "content": "hi", "images": [name]}], home=home, by=users.OPERATOR))
    with pytest.raises(vlm.VLMError, match="not an image"):
        list(vlm.stream(ep, [{"role": "user", "content": "hi", "images": [b"%PDF-1.4 not an image"]}], by=users.OPERATOR, home=home))
    with pytest.raises(vlm.VLMError, match="at most 2"):
        list(vlm.stream(ep, [{"role": "user", "content": "hi", "images": [png(), png(), png()]}], by=users.OPERATOR, home=home))
    with pytest.raises(vlm.VLMError, match="context is 2048 tokens"):
        list(vlm.stream(ep, [{"role": "user", "content": "word " * 2100, "images": []}], max_new_tokens=8, by=users.OPERATOR, home=home))
    import base64
    for images, expect in [([{"data": base64.b64encode(png(200, 200, "blue")[:120]).decode()}], "corrupt or truncated"),
                           ([{"data": "!!! not base64"}], "not valid base64"),
                           ([{"data": base64.b64encode(png_header_only(12_000, 9_000)).decode()}], "108 megapixels"),
                           ([{"path": "/etc/passwd"}], "no file path or URL"),
                           ([{"path": "gallery/uploads/green.png"}], "no file path or URL"),
                           ([{"url": "file:///etc/passwd"}], "no file path or URL"),
                           ([{"data": base64.b64encode(png()).decode(), "path": "/etc/passwd"}], "no file path or URL"),
                           ([{"data": base64.b64encode(png()).decode()}] * 3, "too many images")]:
        code, text = post(ep, {"messages": [{"role": "user", "content": "hi", "images": images}]})
        assert code == 400 and expect in json.loads(text)["error"], (expect, code, text)
    assert post(ep, {"messages": []})[0] == 400
    assert "".join(vlm.stream(ep, [{"role": "user", "content": "Still there?"}], max_new_tokens=3, by=users.OPERATOR, home=home))
    beam = list(vlm.stream(ep, [{"role": "user", "content": "Beams?", "images": [png()]}], max_new_tokens=6, num_beams=2, by=users.OPERATOR, home=home))
    assert len(beam) == 1 and beam[0].strip(), "beam search answers in one piece"

    # a client that goes away mid-answer stops the generation; the next request is answered
    import http.client
    conn = http.client.HTTPConnection(ep["url"].removeprefix("http://"), timeout=30)
    conn.request("POST", "/chat", json.dumps({"messages": [{"role": "user", "content": "Talk a lot."}],
                                              "max_new_tokens": 400, "temperature": 1.0}),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {ep['api_key']}"})
    resp = conn.getresponse()
    assert "delta" in json.loads(resp.readline())
    conn.sock.shutdown(2)
    conn.close()
    log = home / "jobs" / str(job_id) / "run.log"
    said = wait_for(lambda: re.search(r"client went away after (\d+) tokens", log.read_text()), 30, 0.2, "the stop")
    assert int(said[1]) < 400
    assert "".join(vlm.stream(ep, [{"role": "user", "content": "Next?"}], max_new_tokens=3, by=users.OPERATOR, home=home))
    assert queue.get(job_id, home, by=users.OPERATOR).state == "running"
    wait_for(lambda: (vlm.endpoints(home, by=users.OPERATOR) or [{}])[0].get("requests", 0) >= 6, 10, 0.2, "requests to be counted")

    pid = queue.get(job_id, home, by=users.OPERATOR).pid
    queue.cancel(job_id, home, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 30, 0.2, "the job to be cancelled")
    assert vlm.endpoints(home, by=users.OPERATOR) == [] and open_store(home).items("endpoint") == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(vlm.VLMError, match="cannot reach"):
        list(vlm.stream(ep, [{"role": "user", "content": "hi"}], by=users.OPERATOR, home=home))


@pytest.fixture(scope="session")
def tiny_xcomposer(tmp_path_factory):
    from tests.fixtures.tiny_xcomposer import make_tiny_xcomposer
    return make_tiny_xcomposer(tmp_path_factory.mktemp("tinyxc") / "tiny-xcomposer")


@pytest.mark.slow
def test_xcomposer_chat_api_through_the_job(home, worker, tiny_xcomposer):
    """XComposer's own code path, on a remote-code stand-in with its chat() signature: opt-in required,
    one image as a path, several as a list, each placeholder in the turn its image came with, history
    as (query, answer) pairs, the system message as meta_instruction, beams in one piece."""
    store = open_store(home)
    store.put("model", "tiny-xcomposer", str(tiny_xcomposer), {"source": "test"}, owner="local")
    with pytest.raises(queue.SubmitError, match="trust_remote_code opt-in"):
        queue.submit("vlm", {"model": "tiny-xcomposer"}, home=home, owner="local")
    models.set_trust_remote_code("tiny-xcomposer", True, home, by=users.OPERATOR)
    job_id = queue.submit("vlm", {"model": "tiny-xcomposer", "max_images": 3}, home=home, owner="local")
    ep = endpoint_of(home, job_id, 90)
    assert ep["mode"] == "xcomposer"
    first = "".join(vlm.stream(ep, [{"role": "user", "content": "What is it?", "images": [png(20, 10)]}],
                               max_new_tokens=6, by=users.OPERATOR, home=home))
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is it?", "images": [png(20, 10)]},
                    {"role": "assistant", "content": "A red box."},
                    {"role": "user", "content": "And these two?", "images": [png(30, 30), png(40, 20)]}]
    second = list(vlm.stream(ep, conversation, max_new_tokens=6, by=users.OPERATOR, home=home))
    beam = list(vlm.stream(ep, [{"role": "user", "content": "Beams?"}], max_new_tokens=4, num_beams=2, by=users.OPERATOR, home=home))
    assert first and second and len(beam) == 1
    log = (home / "jobs" / str(job_id) / "run.log").read_text()
    assert "image=str sizes=[(20, 10)] history=[] query='<ImageHere>What is it?' meta='You are" in log
    assert ("image=list sizes=[(20, 10), (30, 30), (40, 20)] history=[('<ImageHere>What is it?', 'A red box.')] "
            "query='<ImageHere><ImageHere>And these two?' meta='Be brief.'") in log
    assert "image=NoneType sizes=[] history=[] query='Beams?'" in log
    queue.cancel(job_id, home, by=users.OPERATOR)


def test_models_it_cannot_run_are_refused_at_submit(home, tiny_model, tmp_path, monkeypatch):
    import backend.runtime.placement
    monkeypatch.setattr(backend.runtime.placement, "gpus", lambda: [])
    store = open_store(home)
    store.put("model", "tiny-text", str(tiny_model), {"source": "test"}, owner="local")
    with pytest.raises(queue.SubmitError, match="not an image-text model"):
        queue.submit("vlm", {"model": "tiny-text"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="no model named 'nope'"):
        queue.submit("vlm", {"model": "nope"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="name an image-text model"):
        queue.submit("vlm", {}, home=home, owner="local")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(queue.SubmitError, match="not a transformers model folder"):
        queue.submit("vlm", {"path": str(empty)}, home=home, owner="local")
    xc = tmp_path / "internlm-xcomposer2-7b"
    xc.mkdir()
    (xc / "config.json").write_text(json.dumps({"model_type": "internlmxcomposer2",
                                                "architectures": ["InternLMXComposer2ForCausalLM"],
                                                "auto_map": {"AutoModel": "modeling_internlm_xcomposer2.X"}}))
    store.put("model", "internlm-xcomposer2-7b", str(xc), {"source": "test"}, owner="local")
    with pytest.raises(queue.SubmitError, match="trust_remote_code opt-in"):
        queue.submit("vlm", {"model": "internlm-xcomposer2-7b"}, home=home, owner="local")
    models.set_trust_remote_code("internlm-xcomposer2-7b", True, home, by=users.OPERATOR)
    with pytest.raises(queue.SubmitError, match="7B XComposer model and needs a GPU; this machine has none"):
        queue.submit("vlm", {"model": "internlm-xcomposer2-7b"}, home=home, owner="local")
    llava = tmp_path / "llava-like"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {}}))
    with pytest.raises(queue.SubmitError, match="no GPU"):
        queue.submit("vlm", {"path": str(llava), "device": "cuda"}, home=home, owner="local")
    assert queue.list_jobs(home=home, by=users.OPERATOR) == [], "nothing may be queued"
    # the page offers image-text models only: XComposer by name or architecture, others by their vision tower
    store.put("model", "llava-like", str(llava), {"source": "test"}, owner="local")
    assert vlm.startable(home, by=users.OPERATOR) == ["internlm-xcomposer2-7b", "llava-like"]


@pytest.mark.slow
@pytest.mark.browser
def test_xcomposer_page_image_chat_and_compose(home, tiny_llava, page, tmp_path):
    from tests.conftest import shot
    open_store(home).put("model", "tiny-llava", str(tiny_llava), {"source": "test"}, owner="local")
    (home / "gallery").mkdir()
    (home / "gallery" / "sea.png").write_bytes(png(64, 32, "blue"))
    page.goto(page.base_url + "/xcomposer")
    page.get_by_text("No image-text model is running").wait_for()
    # the only model is preselected (Streamlit's selectbox shows its value in a combobox input)
    wait_for(lambda: page.locator(".st-key-xc_model input").input_value() == "tiny-llava", 30, what="preselected model")
    page.locator(".st-key-xc_start button").click()
    page.locator(".st-key-xc_pick").wait_for(timeout=120_000)

    # image chat: a bad upload is refused on the page, a good one is kept in the gallery and asked about
    good, bad = tmp_path / "cat.png", tmp_path / "notes.png"
    good.write_bytes(png(48, 48, "orange"))
    bad.write_bytes(b"this is not an image")
    uploader = page.locator(".st-key-xc_upload")
    uploader.locator("input[type=file]").set_input_files([str(bad)])
    page.get_by_text("Not sent: notes.png is not an image").wait_for()
    uploader.locator('[data-testid="stFileChipDeleteBtn"] button, [data-testid="stFileChipDeleteBtn"]').first.click()
    page.get_by_text("Not sent").wait_for(state="detached")
    uploader.locator("input[type=file]").set_input_files([str(good)])
    wait_for(lambda: len(list((home / "gallery" / "uploads").glob("*.png"))) == 1, 30, what="upload kept in the gallery")
    page.locator(".st-key-xc_input textarea").fill("What is in this picture?")
    page.locator(".st-key-xc_input textarea").press("Enter")
    wait_for(lambda: vlm.endpoints(home, by=users.OPERATOR)[0].get("requests", 0) >= 1, 60, 0.2, "the page's request")
    wait_for(lambda: page.locator(".st-key-xc_answer").inner_text().strip(), 60, 0.3, "a streamed answer")
    shot(page, "xcomposer_image_chat")

    # compose: article -> places and captions -> gallery images ranked and matched -> edit -> export
    page.get_by_text("Compose an article").click()
    page.locator(".st-key-xc_instruction textarea").fill("Write a short article about the sea and a cat.")
    page.locator(".st-key-xc_write button").click()
    page.locator(".st-key-xc_para_0").wait_for(timeout=60_000)
    page.locator(".st-key-xc_place button").click()
    slot = page.locator("[class*='st-key-xc_slot_']").first
    slot.wait_for(timeout=60_000)
    page.locator(".st-key-xc_match button").click()
    slot.locator("img").wait_for(timeout=60_000)             # both gallery images captioned, the best one placed
    from backend.pipeline import compose
    (draft,) = compose.drafts(home, by=users.OPERATOR)
    assert len(compose.captions(home)) == 2 and all(len(s["ranked"]) == 2 for s in draft["slots"])
    assert draft["slots"][0]["image"] == draft["slots"][0]["ranked"][0][0]
    other = draft["slots"][0]["ranked"][1][0]
    pick = slot.locator("[class*='st-key-xc_pick_'] input")
    pick.click()
    pick.fill(other.rsplit("/", 1)[-1][:6])
    page.get_by_role("option").first.click()
    wait_for(lambda: compose.drafts(home, by=users.OPERATOR)[0]["slots"][0]["image"] == other, 30, what="the user's pick saved")
    before = compose.drafts(home, by=users.OPERATOR)[0]["paragraphs"][0]
    page.locator(".st-key-xc_edit_shorten_0 button").click()
    wait_for(lambda: compose.drafts(home, by=users.OPERATOR)[0]["paragraphs"][0] != before, 60, what="the shortened paragraph")
    page.reload()                                             # ?draft=<id> reopens the draft
    slot.locator("img").wait_for(timeout=30_000)
    slot.scroll_into_view_if_needed()
    shot(page, "xcomposer_compose")
    with page.expect_download() as dl:
        page.locator(".st-key-xc_export_html button").click()
    html_text = open(dl.value.path(), encoding="utf-8").read()
    assert html_text.count("data:image/png;base64,") == len(draft["slots"]) and "<figcaption>" in html_text
    with page.expect_download() as dl:
        page.locator(".st-key-xc_export_md button").click()
    import zipfile
    with zipfile.ZipFile(dl.value.path()) as z:
        md = z.read("article.md").decode()
        assert [n for n in z.namelist() if n.startswith("images/")] and "](images/" in md
