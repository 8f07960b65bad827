"""Image-text fine-tune end to end on a tiny random LLaVA built offline: image-text datasets as people
publish them (LLaMA-Factory, ShareGPT with <image>, XTuner LLaVA, InternVL jsonl), uploaded as a zip with
their images and resolved inside the dataset's folder only; validation naming rows with bad images; token
ids and loss masks per format (image tokens never trained, only assistant turns); a real fine-tune job
through a real worker that lowers the loss and registers an adapter with its lineage; the vlm job serving the
tuned adapter, answering differently from the base on a training image; the Datasets and Fine-tune pages."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import finetune as ft, labs, vlm
from backend.runtime import logs, queue
from backend.workspace import datasets, image_text
from backend.core.errors import UserError
from backend.kinds.finetune import Spec
from backend.core.store import open_store
from tests.conftest import endpoint_of, run_burst
from tests.test_vlm import png, png_header_only

COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 220, 20)}
QUESTION = "What colour is this picture?"


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from tests.fixtures.tiny_vlm import make_tiny_llava
    return make_tiny_llava(tmp_path_factory.mktemp("tinyvlm-ft") / "tiny-llava")


def image(colour: str, size: int = 32) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buf, "PNG")
    return buf.getvalue()


# one row each format publishes, all asking about images/red.png
def llamafactory(img: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": f"<image>{QUESTION}"}, {"role": "assistant", "content": answer}],
            "images": [img]}


def sharegpt(img: str, answer: str) -> dict:
    return {"conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}],
            "images": [img], "system": "You look at pictures."}


def xtuner_llava(img: str, answer: str) -> dict:     # XTuner's LLaVA JSON (LLaVA-Instruct's own form)
    return {"id": "000001", "image": img,
            "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}]}


def internvl(img: str, answer: str) -> dict:        # InternVL's jsonl: no marker in the text → one added in front
    return {"id": 0, "image": img, "width": 32, "height": 32,
            "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer},
                              {"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": "Yes."}]}


FORMATS = {"llamafactory": llamafactory, "sharegpt": sharegpt, "xtuner_llava": xtuner_llava, "internvl": internvl}


def dataset_zip(rows: list[dict], images: dict[str, bytes], data_name: str = "data.jsonl", top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(top + data_name, "\n".join(json.dumps(r) for r in rows) + "\n" if data_name.endswith(".jsonl")
                   else json.dumps(rows))
        for name, data in images.items():
            z.writestr(top + name, data)
    return buf.getvalue()


def colour_zip(n: int = 16) -> bytes:
    names = list(COLOURS)
    rows = [llamafactory(f"images/{names[i % 4]}.png", f"It is {names[i % 4]}.") for i in range(n)]
    return dataset_zip(rows, {f"images/{c}.png": image(c) for c in names})


# -- data: formats, folders, validation ----------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_published_form_reads_as_messages_with_its_images(home, fmt):
    entry = image_text.save_zip(f"{fmt}.zip", dataset_zip([FORMATS[fmt]("images/red.png", "Red.")],
                                                          {"images/red.png": image("red")}), home, owner="ann")
    assert entry.owner == "ann" and entry.meta["images"] == 1 and entry.meta["source"] == "upload"
    path = datasets.resolve(entry.name, home)
    assert path.parent == home / "datasets" / fmt and image_text.has_images(path)
    [(chat, files)] = image_text.load_rows(path)
    assert files == [path.parent / "images" / "red.png"]
    user = next(m for m in chat if m["role"] == "user")
    assert user["content"].count("<image>") == 1 and QUESTION in user["content"]
    assert [m["role"] for m in chat if m["role"] != "system"][:2] == ["user", "assistant"]


def test_internvl_meta_and_a_root_folder(home):
    """InternVL's meta file names the annotation; image paths relative to the folder above it resolve too."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("meta.json", json.dumps({"food": {"root": "images/", "annotation": "ann/food.jsonl"}}))
        z.writestr("ann/food.jsonl", json.dumps(internvl("images/red.png", "Red.")) + "\n")
        z.writestr("images/red.png", image("red"))
    entry = image_text.save_zip("food.zip", buf.getvalue(), home, owner="ann")
    assert entry.path.endswith("ann/food.jsonl")
    assert image_text.load_rows(entry.path)[0][1] == [home / "datasets" / "food" / "images" / "red.png"]


def test_llamafactory_demo_layout_picks_the_data_file_not_dataset_info(home):
    """LLaMA-Factory's mllm_demo: dataset_info.json beside mllm_demo.json and its mllm_demo_data/ images."""
    files = {"dataset_info.json": json.dumps({"mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt"}}),
             "mllm_demo.json": json.dumps([sharegpt("mllm_demo_data/1.jpg", "Red.")]),
             "mllm_demo_data/1.jpg": image("red")}
    entry = image_text.save_zip("mllm_demo.zip", _zip_of(files), home, owner="ann")
    assert entry.path.endswith("mllm_demo/mllm_demo.json") and entry.meta["images"] == 1


def test_images_stay_inside_the_dataset_folder(home, tmp_path):
    secret = home / "datasets" / "bob" / "private.png"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(image("red"))
    for bad in ("../bob/private.png", str(secret), "/etc/passwd"):
        entry = image_text.save_zip(f"x{len(bad)}.zip", dataset_zip([llamafactory(bad, "Red.")], {}), home, owner="ann")
        with pytest.raises(datasets.DatasetError, match="outside the dataset's folder"):
            image_text.load_rows(entry.path)
        assert image_text.thumbnails(entry.path, llamafactory(bad, "x")) == []
    # a zip member that would land outside its folder is refused whole
    for member in ("../evil.png", "/abs/evil.png"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("data.jsonl", json.dumps(llamafactory("a.png", "x")))
            z.writestr(member, b"x")
        with pytest.raises(datasets.DatasetError, match="outside the dataset's folder"):
            image_text.save_zip("evil.zip", buf.getvalue(), home, owner="ann")
    assert not (home / "evil.png").exists() and not (home / "datasets" / "evil").exists()
    with pytest.raises(datasets.DatasetError, match="not a zip"):
        image_text.save_zip("nozip.zip", b"hello", home, owner="ann")
    with pytest.raises(datasets.DatasetError, match="no .json or .jsonl"):
        image_text.save_zip("noimg.zip", _zip_of({"a.png": image("red")}), home, owner="ann")


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return buf.getvalue()


def test_a_folder_is_imported_from_an_import_folder_only_and_links_are_skipped(home, tmp_path, monkeypatch):
    src = tmp_path / "imports" / "food"
    (src / "images").mkdir(parents=True)
    (src / "images" / "red.png").write_bytes(image("red"))
    (src / "data.json").write_text(json.dumps([xtuner_llava("images/red.png", "Red.")]))
    (src / "images" / "passwd.png").symlink_to("/etc/passwd")
    monkeypatch.setenv("WORKBENCH_IMPORT_DIRS", str(tmp_path / "imports"))
    entry = image_text.import_folder(src, "food", home, owner="bob")
    assert entry.owner == "bob" and entry.meta["source"] == "import" and entry.meta["images"] == 1
    assert (home / "datasets" / "food" / "images" / "red.png").is_file()
    assert not (home / "datasets" / "food" / "images" / "passwd.png").exists()
    with pytest.raises(datasets.DatasetError, match="already exists"):
        image_text.import_folder(src, "food", home, owner="bob")
    datasets.delete("food", home, by="bob")                # the data file and its images
    assert not (home / "datasets" / "food").exists() and (src / "images" / "red.png").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(datasets.DatasetError, match="not a folder in the import folders"):
        image_text.import_folder(elsewhere, "x", home, owner="bob")


def test_validation_names_each_row_with_a_bad_image_and_stats_count_images(home, monkeypatch):
    monkeypatch.setattr(image_text, "IMAGE_MAX_MB", 0.001)        # ~1 KB: the big image is "too large"
    rows = [llamafactory("ok.png", "Fine."), llamafactory("gone.png", "Missing."), llamafactory("cut.png", "Cut."),
            llamafactory("notes.png", "Text."), llamafactory("big.png", "Big."), llamafactory("huge.png", "Pixels."),
            {"messages": [{"role": "user", "content": "<image><image>Two?"}, {"role": "assistant", "content": "x"}],
             "images": ["ok.png"]}]
    big = bytes(png(400, 400, "blue")) + b"\0" * 2048
    files = {"ok.png": png(), "cut.png": png(200, 200, "blue")[:120], "notes.png": b"hello, I am a text file",
             "big.png": big, "huge.png": png_header_only(10_000, 10_000)}
    entry = image_text.save_zip("checks.zip", dataset_zip(rows, files), home, owner="ann")
    report = image_text.validate(entry.path)
    assert (report["rows"], report["good"], report["bad"], report["images"]) == (7, 1, 6, 1)
    reasons = {e["line"]: e["reason"] for e in report["errors"]}
    assert "'gone.png' is missing" in reasons[2]
    assert "cut.png looks like an image but is corrupt" in reasons[3]
    assert "notes.png is not an image" in reasons[4]
    assert "'big.png' is" in reasons[5] and "an image may be at most" in reasons[5]
    assert "huge.png is 10000 x 10000" in reasons[6] or "100 megapixels" in reasons[6], reasons[6]
    assert "2 <image> markers but 1 images" in reasons[7]
    assert "缺少图片 'gone.png'" in image_text.validate(entry.path, lang="zh")["errors"][0]["reason"]
    monkeypatch.setattr(image_text, "IMAGE_MAX_MB", 20)
    stats = image_text.stats(entry.path)
    assert stats["rows"] == 7 and stats["images"] == 2 and stats["per_row"] == {1: 2} and stats["bad"] == 5
    assert stats["width"] == [40, 400] and stats["bytes"] == len(png()) + len(big)


# -- token ids and loss masks --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_only_assistant_tokens_train_and_image_tokens_never(home, tiny_llava, fmt):
    from transformers import AutoProcessor

    from jobs.finetune_image import image_token_ids, load_images, tokenize
    processor = AutoProcessor.from_pretrained(tiny_llava)
    tok = processor.tokenizer
    entry = image_text.save_zip(f"{fmt}.zip", dataset_zip([FORMATS[fmt]("images/red.png", "It is red.")],
                                                          {"images/red.png": image("red")}), home, owner="ann")
    [(chat, files)] = image_text.load_rows(entry.path)
    ids, labels, text = tokenize(processor, chat, load_images(files), 512)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_token_ids(processor) == {image_id}
    assert ids.count(image_id) == 16                     # the processor's expansion: (32 / 8) ** 2 image tokens
    assert all(lab == -100 for t, lab in zip(ids, labels) if t == image_id)
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    expected = "It is red.<|im_end|>\n" + ("Yes.<|im_end|>\n" if fmt == "internvl" else "")
    assert trained == expected
    assert [lab for lab in labels if lab != -100] == [t for t, lab in zip(ids, labels) if lab != -100]
    # the ids are exactly what the processor gives the model for this text and image
    assert ids == processor(text=[text], images=load_images(files), return_tensors="pt")["input_ids"][0].tolist()
    # too short for the image tokens: dropped, never cut through an image
    assert tokenize(processor, chat, load_images(files), 10) is None


# -- the job, the adapter, serving it --------------------------------------------------------------
@pytest.fixture
def vws(home, tiny_llava):
    open_store(home).put("model", "tiny-llava", str(tiny_llava), {"source": "test"}, owner="local")
    image_text.save_zip("colours.zip", colour_zip(), home, owner="local")
    return home


def ft_spec(**kw) -> dict:
    return {"base_model": "tiny-llava", "datasets": ["colours"], "preset": "vlm_cpu_demo", "max_steps": 30,
            "lr": 1e-2, "lora_r": 8, "batch_size": 4, "save_steps": 10, "name": "tiny-colours",
            "sample_prompts": [QUESTION], "sample_images": ["images/red.png"], **kw}


def test_submit_checks_count_image_tokens_and_refuse_what_cannot_train(vws, tiny_model):
    plan = ft.check(Spec(**ft_spec()), vws, gpu_list=[])
    est = plan["estimate"]
    assert est["image_tokens_per_image"] == 16 and est["row_tokens"] > 16 and plan["images_checked"] == 16
    longer = ft.check(Spec(**ft_spec(max_length=2048)), vws, gpu_list=[])["estimate"]
    assert longer["activations_gb"] == est["activations_gb"], "rows are far shorter than max_length: no change"
    with pytest.raises(UserError, match="images alone take 16 tokens"):
        ft.check(Spec(**ft_spec(max_length=16)), vws, gpu_list=[])
    open_store(vws).put("model", "tiny-text", str(tiny_model), owner="local")
    with pytest.raises(UserError, match="not an image-text model"):
        ft.check(Spec(**ft_spec(base_model="tiny-text")), vws, gpu_list=[])
    with pytest.raises(UserError, match="outside the dataset's folder"):
        ft.check(Spec(**ft_spec(sample_images=["../colours/images/red.png", "/etc/passwd"][1:])), vws, gpu_list=[])
    with pytest.raises(ValueError, match="objective sft"):
        Spec(**ft_spec(objective="dpo"))
    with pytest.raises(ValueError, match="modality image_text"):
        Spec(base_model="x", datasets=["y"], sample_images=["a.png"])


def test_stats_job_counts_images_per_row(vws):
    job_id = queue.submit("dataset_stats", {"dataset": "colours"}, owner="local", home=vws)
    run_burst(vws, timeout=120)
    result = logs.result(job_id, vws)
    assert result["rows"] == 16 and result["bad_rows"] == 0, logs.tail(job_id, 30, home=vws)
    assert result["images"] == {"rows": 16, "images": 16, "per_row": {"1": 16}, "bytes": result["images"]["bytes"],
                                "width": [32, 32], "height": [32, 32], "bad": 0}


@pytest.mark.slow
def test_fine_tune_from_a_zip_lowers_the_loss_and_the_served_adapter_answers_differently(vws):
    job_id = queue.submit("finetune", ft_spec(), owner="local", home=vws)
    proc = run_burst(vws, timeout=400)
    job = queue.get(job_id, vws, by=users.OPERATOR)
    assert job.state == "succeeded", proc.stdout + logs.tail(job_id, 60, home=vws)
    events, _ = logs.read_events(job_id, home=vws)
    losses = [e["loss"] for e in events if e["type"] == "metric" and "loss" in e]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    result = logs.result(job_id, vws)
    assert result["answers_before"] != result["answers_after"] and result["answers_after"][0].startswith("It is")
    adapter = open_store(vws).get("adapter", "tiny-colours")
    assert adapter.owner == "local"
    meta = adapter.meta
    assert meta["base_model"] == "tiny-llava" and meta["datasets"] == ["colours"] and meta["job"] == job_id
    assert meta["modality"] == "image_text" and (Path(adapter.path) / "adapter_model.safetensors").exists()
    assert (Path(adapter.path) / "processor_config.json").exists()
    from safetensors import safe_open
    with safe_open(str(Path(adapter.path) / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all("language_model" in n for n in names), "LoRA on the language model only"

    # the image-text lab: its fine-tune step filled for this student (their dataset with images, its first photo),
    # and its check passed on this run with the photo's answers before and after; not on another student's
    lab = labs.get("image_text", vws)
    step = labs.step_spec(lab, 1, "local", {"vlm_model": "tiny-llava"}, home=vws)
    assert step["datasets"] == ["colours"] and step["sample_images"] == ["images/red.png"]
    assert step["preset"] == "vlm_cpu_demo" and step["modality"] == "image_text"
    done = labs.run("image_text", "local", vws)
    assert done["passed"], done
    sample = done["checks"][0]["seen"]["samples"][0]
    assert sample["image"] == "images/red.png" and sample["before"] != sample["after"] and sample["after"].startswith("It is")
    with pytest.raises(labs.Missing, match="did not fall"):
        labs.check_image_text(labs.Ctx("local", vws, {}, []), min_drop=0.99)
    assert labs.run("image_text", "bob", vws)["checks"][0]["problem"]["key"] == "err.lab.no_image_text"
    upload, tune = labs.get("image_text", vws).steps           # the by-hand upload step is done by the upload
    assert labs.step_done(upload, "local", vws) and labs.step_done(tune, "local", vws)
    assert not labs.step_done(upload, "bob", vws)

    # the base and the tuned adapter served side by side answer differently on a training image
    base_job = queue.submit("vlm", {"model": "tiny-llava", "name": "base"}, owner="local", home=vws)
    tuned_job = queue.submit("vlm", {"adapter": "tiny-colours", "name": "tuned"}, owner="local", home=vws)
    from tests.conftest import start_worker, stop
    worker = start_worker(vws, WORKBENCH_CPU_SLOTS=2)            # both servers at once
    try:
        base, tuned = endpoint_of(vws, base_job, 120), endpoint_of(vws, tuned_job, 120)
        assert tuned["adapter"] == "tiny-colours" and tuned["base_model"] == "tiny-llava"
        ask = [{"role": "user", "content": QUESTION, "images": [image("red")]}]
        answers = {ep["name"]: "".join(vlm.stream(ep, ask, max_new_tokens=8, by=users.OPERATOR, home=defaults.home())) for ep in (base, tuned)}
        assert answers["tuned"] != answers["base"] and answers["tuned"].startswith("It is"), answers
    finally:
        for j in (base_job, tuned_job):
            queue.cancel(j, home=vws, by=users.OPERATOR)
        stop(worker)

    # merged: a whole image-text model (its processor beside it) that answers as the adapter did
    merge_id = queue.submit("merge", {"adapter": "tiny-colours"}, owner="local", home=vws)
    run_burst(vws, timeout=200)
    assert queue.get(merge_id, vws, by=users.OPERATOR).state == "succeeded", logs.tail(merge_id, 40, home=vws)
    merged = open_store(vws).get("model", "tiny-colours-merged")
    assert merged.meta["lineage"]["adapter"] == "tiny-colours" and merged.owner == "local"
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from jobs.finetune_image import load_images, render
    processor = AutoProcessor.from_pretrained(merged.path)
    prompt = render(processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                    gen=True)
    red = Path(merged.path).parent.parent / "datasets" / "colours" / "images" / "red.png"
    inputs = processor(text=[prompt], images=load_images([red]), return_tensors="pt")
    out = AutoModelForImageTextToText.from_pretrained(merged.path).generate(**inputs, max_new_tokens=6, do_sample=False)
    assert processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).startswith("It is")
    assert torch.equal(out[0, :inputs["input_ids"].shape[1]], inputs["input_ids"][0])


# -- the pages -------------------------------------------------------------------------------------
@pytest.fixture
def worker(home):
    """The app's worker with room for two CPU servers (the base and the tuned model side by side)."""
    from tests.conftest import start_worker, stop
    open_store(home)              # the database made before the worker and the app open it at once
    proc = start_worker(home, WORKBENCH_CPU_SLOTS=3)
    yield proc
    stop(proc)


@pytest.mark.browser
def test_upload_the_zip_see_thumbnails_fine_tune_and_see_before_after(page, home, tiny_llava, tmp_path):
    from tests.conftest import pick, shot, wait_for
    open_store(home).put("model", "tiny-llava", str(tiny_llava), {"source": "test"}, owner="local")
    (tmp_path / "colours.zip").write_bytes(colour_zip())
    page.set_viewport_size({"width": 1400, "height": 2200})
    page.goto(f"{page.base_url}/datasets")
    page.get_by_text("Upload a file").first.click()
    page.locator(".st-key-ds_upload input[type=file]").set_input_files([str(tmp_path / "colours.zip")])
    page.get_by_role("button", name="Save to the workspace").click()
    thumbs = page.locator(".st-key-ds_thumbs img")
    thumbs.first.wait_for(timeout=30_000)
    wait_for(lambda: thumbs.count() >= 4, 20, what="a thumbnail per row")
    page.locator(".st-key-ds_detail img").first.wait_for()             # the selected row's image, beside its chat
    shot(page, "image-text-dataset")

    page.goto(f"{page.base_url}/finetune")
    page.get_by_role("button", name="Start fine-tuning").wait_for(timeout=60_000)
    form = page.locator(".st-key-ft-form")
    form.locator("label").get_by_text("Image-text", exact=True).click()
    pick(page, "ft_datasets_image_text", "colours")
    page.keyboard.press("Escape")
    form.get_by_text("preset: vlm_cpu_demo").wait_for()
    page.locator(".st-key-ft-estimate").get_by_text("Estimated peak").wait_for()
    page.locator(".st-key-ft-estimate").get_by_text("Image tokens counted: 16 per image").wait_for()
    form.get_by_text("Advanced settings").click()
    page.locator(".st-key-ft_prompts_image_text textarea").fill(QUESTION)
    page.locator(".st-key-ft_sample_images input").fill("images/red.png")
    page.locator(".st-key-ft_sample_images input").press("Enter")
    form.get_by_text("images/red.png").first.wait_for()                # in the YAML: the spec took it
    page.locator(".st-key-ft_submit button").click()
    job_id = wait_for(lambda: [j.id for j in queue.list_jobs(kind="finetune", home=home, by=users.OPERATOR)], 30, what="a job")[0]
    run = page.locator(".st-key-ft-run")
    run.locator("[data-testid='job-state'][data-state='succeeded']").wait_for(state="attached", timeout=240_000)
    pair = page.locator(f".st-key-ft_before_after_{job_id}")
    pair.get_by_text("Before training").wait_for()
    pair.get_by_text("After training").wait_for()
    result = logs.result(job_id, home)
    assert result["answers_before"] != result["answers_after"]
    assert queue.get(job_id, home, by=users.OPERATOR).spec["modality"] == "image_text"
    shot(page, "image-text-finetune")

    # base and tuned side by side on the XComposer page, on a training image
    run.get_by_role("button", name="Compare base and tuned on images").click()
    page.wait_for_url("**/xcomposer**")
    wait_for(lambda: len(vlm.endpoints(home, by=users.OPERATOR)) == 2, 180, 0.5, "the base and the tuned servers")
    page.reload()
    page.locator(".st-key-xc_pick").wait_for(timeout=60_000)
    (tmp_path / "red.png").write_bytes(image("red"))
    page.locator(".st-key-xc_upload input[type=file]").set_input_files([str(tmp_path / "red.png")])
    page.get_by_text("Compare two").click()
    page.locator(".st-key-xc_compare_q input").fill(QUESTION)
    page.locator(".st-key-xc_compare_q input").press("Enter")
    page.locator(".st-key-xc_compare_go button").click()
    a, b = page.locator(".st-key-xc_compare_a"), page.locator(".st-key-xc_compare_b")
    wait_for(lambda: len(a.inner_text().strip().splitlines()) >= 2 and len(b.inner_text().strip().splitlines()) >= 2,
             60, 0.3, "both answers")
    answers = {a.inner_text().splitlines()[0]: a.inner_text(), b.inner_text().splitlines()[0]: b.inner_text()}
    tuned = next(t for name, t in answers.items() if "-lora-job" in name)        # "tiny-llava-lora-job1 #3"
    base = next(t for name, t in answers.items() if "-lora-job" not in name)     # "tiny-llava #2"
    assert "It is" in tuned and "It is" not in base, answers
    shot(page, "image-text-compare")


@pytest.mark.slow
def test_the_vision_tower_stays_frozen_and_the_projector_trains_when_asked(vws):
    """LoRA + train_projector: the adapter holds the projector; full: the language model and projector change,
    the vision tower does not."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    lora = queue.submit("finetune", ft_spec(name="with-proj", train_projector=True, max_steps=3), owner="local", home=vws)
    full = queue.submit("finetune", ft_spec(name="full-lm", method="full", train_projector=True, max_steps=3),
                        owner="local", home=vws)
    run_burst(vws, timeout=400)
    for j in (lora, full):
        assert queue.get(j, vws, by=users.OPERATOR).state == "succeeded", logs.tail(j, 40, home=vws)
    adapter = open_store(vws).get("adapter", "with-proj")
    with safe_open(str(Path(adapter.path) / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any("multi_modal_projector" in n for n in names) and not any("vision_tower" in n for n in names)
    model = open_store(vws).get("model", "full-lm")
    assert model.owner == "local" and model.meta["lineage"]["base_model"] == "tiny-llava"
    base = load_file(str(Path(open_store(vws).get("model", "tiny-llava").path) / "model.safetensors"))
    tuned = load_file(str(Path(model.path) / "model.safetensors"))
    changed = {k.split(".")[1] for k in base if k in tuned and not (base[k] == tuned[k]).all()}
    assert not any("vision_tower" in k and not (base[k] == tuned[k]).all() for k in base if k in tuned)
    assert any("multi_modal_projector" in k and not (base[k] == tuned[k]).all() for k in base if k in tuned)
    assert any("language_model" in k and not (base[k] == tuned[k]).all() for k in base if k in tuned), changed


@pytest.mark.slow
def test_an_image_text_run_resumes_from_its_checkpoint(vws):
    first = queue.submit("finetune", ft_spec(name="part-1", max_steps=10, save_steps=5), owner="local", home=vws)
    run_burst(vws, timeout=300)
    assert queue.get(first, vws, by=users.OPERATOR).state == "succeeded", logs.tail(first, 40, home=vws)
    assert [p.name for p in ft.checkpoints(first, vws)] == ["step-5"]
    again = queue.submit("finetune", ft_spec(name="part-2", max_steps=10, save_steps=5, resume_from=first),
                         owner="local", home=vws)
    run_burst(vws, timeout=300)
    assert queue.get(again, vws, by=users.OPERATOR).state == "succeeded", logs.tail(again, 40, home=vws)
    result = logs.result(again, vws)
    assert result["resumed_from_step"] == 5 and result["steps"] == 10
    events, _ = logs.read_events(again, home=vws)
    assert [e["step"] for e in events if e["type"] == "metric" and "loss" in e] == list(range(6, 11))
