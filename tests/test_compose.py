"""Compose steps without a model: parsing the model's answers, ranking gallery images by caption,
drafts on disk, the gallery's checks and the two exports."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from backend.access import users
from backend.pipeline import compose, vlm
from tests.test_vlm import png

ARTICLE = "# West Lake\n\nThe lake is calm at dawn.\n\nA cat sleeps on the bridge. It <b>purrs</b>.\n\nBoats drift home."


def test_paragraphs_and_slots_from_a_good_answer():
    paras = compose.paragraphs(ARTICLE)
    assert paras == ["# West Lake", "The lake is calm at dawn.", "A cat sleeps on the bridge. It <b>purrs</b>.",
                     "Boats drift home."]
    assert compose.paragraphs("one\ntwo\n three ") == ["one", "two", "three"]     # no blank lines: one per line
    slots = compose.parse_slots("Sure!\n2: the lake at sunrise\n[3] - a cat on a stone bridge\n9: out of range\n"
                                "2: a second caption for 2", paras, 3)
    assert [(s["after"], s["caption"], s["by"]) for s in slots] == [(1, "the lake at sunrise", "model"),
                                                                      (2, "a cat on a stone bridge", "model")]
    zh = compose.parse_slots("第2段：清晨的湖面\n3、桥上的猫", paras, 2)
    assert [(s["after"], s["caption"]) for s in zh] == [(1, "清晨的湖面"), (2, "桥上的猫")]


def test_slots_when_the_model_rambles():
    paras = compose.paragraphs(ARTICLE)
    slots = compose.parse_slots("lorem ipsum with no numbered lines at all", paras, 2)
    assert [s["after"] for s in slots] == [0, 2] and {s["by"] for s in slots} == {"workbench"}
    assert slots[1]["caption"] == "A cat sleeps on the bridge."              # the paragraph's first sentence
    assert len(compose.parse_slots("", ["only one"], 5)) == 1                # never more places than paragraphs


def test_ranking_by_caption_en_and_zh():
    candidates = {"a.png": "a boat on a calm lake", "b.png": "an orange cat sleeping on a stone bridge",
                  "c.png": "", "d.png": "一只橘猫睡在石桥上"}
    assert compose.rank("a cat on a bridge", candidates)[0][0] == "b.png"
    assert compose.rank("boats on the lake at dawn", candidates)[0][0] == "a.png"
    assert compose.rank("石桥上的猫", candidates)[0][0] == "d.png"
    assert compose.similarity("same words", "same words") == pytest.approx(1.0)
    assert compose.similarity("", "anything") == 0.0


def test_prompts_refuse_bad_input():
    with pytest.raises(compose.ComposeError, match="write an instruction first"):
        compose.article_prompt("   ")
    with pytest.raises(compose.ComposeError, match="unknown edit"):
        compose.edit_prompt("translate", "p", "ctx")
    assert "half its length" in compose.edit_prompt("shorten", "p", "ctx")


def test_gallery_checks_keep_images_inside_the_workspace(home, monkeypatch):
    rel = compose.add_to_gallery("cat.png", png(20, 20, "orange"), home, owner="local")
    assert rel.startswith("gallery/uploads/") and compose.gallery(home, by=users.OPERATOR) == [rel]
    assert compose.add_to_gallery("again.png", png(20, 20, "orange"), home, owner="local") == rel      # same bytes, same file
    with pytest.raises(vlm.VLMError, match="not an image"):
        compose.add_to_gallery("notes.png", b"just text", home, owner="local")
    monkeypatch.setenv("WORKBENCH_UPLOAD_MAX_MB", "0")
    with pytest.raises(compose.ComposeError, match="upload limit is 0 MB"):
        compose.add_to_gallery("big.png", png(), home, owner="local")
    (home.parent / "outside.png").write_bytes(png())
    for bad in ("../outside.png", str(home.parent / "outside.png"), "gallery/missing.png"):
        with pytest.raises(compose.ComposeError, match="not an image in this workspace"):
            compose.resolve(bad, home, by=users.OPERATOR)
    assert compose.gallery(home, by=users.OPERATOR) == [rel], "refused uploads leave nothing behind"


def test_draft_rerank_and_exports(home):
    lake = compose.add_to_gallery("lake.png", png(30, 20, "blue"), home, owner="local")
    cat = compose.add_to_gallery("cat.png", png(20, 20, "orange"), home, owner="local")
    caps = {compose.image_key(lake, home): "a calm lake at dawn", compose.image_key(cat, home): "a cat on a bridge"}
    (home / "gallery" / ".captions.json").write_text(json.dumps(caps))
    draft = compose.new_draft("Write about West Lake", [], owner="ann")
    draft["paragraphs"] = compose.paragraphs(ARTICLE)
    draft["slots"] = compose.parse_slots("2: the calm lake\n3: a sleeping cat on the bridge", draft["paragraphs"], 2)
    compose.rerank(draft, home, by=users.OPERATOR)
    assert [s["image"] for s in draft["slots"]] == [lake, cat]
    draft["slots"][0].update(image=cat, chosen=True)              # the user's pick survives a re-rank
    compose.rerank(draft, home, by=users.OPERATOR)
    assert draft["slots"][0]["image"] == cat
    compose.save(draft, home, by=users.OPERATOR)
    assert compose.drafts(home, owner="ann", by=users.OPERATOR)[0]["slots"][0]["image"] == cat and compose.drafts(home, owner="bob", by=users.OPERATOR) == []

    page = compose.export_html(draft, home, by=users.OPERATOR)
    assert page.count("data:image/png;base64,") == 2 and "<h1>West Lake</h1>" in page
    assert "&lt;b&gt;purrs&lt;/b&gt;" in page and "<b>purrs" not in page, "the model's text is escaped"
    with zipfile.ZipFile(io.BytesIO(compose.export_markdown(draft, home, by=users.OPERATOR))) as z:
        md = z.read("article.md").decode()
        images = [n for n in z.namelist() if n.startswith("images/")]
        assert len(images) == 2 and all(f"]({n})" in md for n in images)
        assert md.index("The lake is calm") < md.index(images[0]) < md.index("A cat sleeps")
