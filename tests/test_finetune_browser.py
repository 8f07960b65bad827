"""The Fine-tune page as a person sees it: pick a preset, see the estimate and YAML, start a run on
the tiny model, watch the loss chart fill, compare runs."""
import pytest

from backend.access import users
from backend.runtime import queue
from backend.workspace import datasets
from backend.core.store import open_store
from tests.conftest import pick, shot, wait_for

pytestmark = pytest.mark.browser


def test_submit_a_tiny_run_from_the_page_and_see_the_loss_chart(page, home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    page.set_viewport_size({"width": 1400, "height": 2200})
    page.goto(f"{page.base_url}/finetune")
    page.get_by_role("button", name="Start fine-tuning").wait_for(timeout=60_000)
    form = page.locator(".st-key-ft-form")
    form.get_by_text("preset: cpu_demo").wait_for()           # no GPU here: the CPU demo is the default
    form.get_by_text("python -m backend submit finetune spec.yaml").wait_for()
    page.locator(".st-key-ft-estimate").get_by_text("Estimated peak").wait_for()
    page.locator(".st-key-ft-estimate").get_by_text("Estimated duration").wait_for()
    # QLoRA on this GPU-less machine: the CPU preset asks for device cpu, so it runs with a warning;
    # with device auto (an advanced field) it is refused before anything is queued
    form.locator("label").get_by_text("qlora", exact=True).click()
    form.get_by_text("QLoRA on the CPU").wait_for()
    form.get_by_text("Advanced settings").click()
    pick(page, "ft_device_cpu_demo", "auto")
    form.get_by_text("QLoRA needs a CUDA GPU").wait_for()
    assert page.locator(".st-key-ft_submit button").is_disabled()
    form.locator("label").get_by_text("lora", exact=True).click()
    form.get_by_text("QLoRA needs a CUDA GPU").wait_for(state="detached")
    page.locator(".st-key-ft_submit button").click()
    job_id = wait_for(lambda: [j.id for j in queue.list_jobs(kind="finetune", home=home, by=users.OPERATOR)], 30, what="a job")[0]
    run = page.locator(".st-key-ft-run")
    run.locator("[data-testid='job-state'][data-state='succeeded']").wait_for(state="attached", timeout=180_000)
    run.get_by_text("loss", exact=True).first.wait_for()
    charts = run.locator("[data-testid='stVegaLiteChart']")
    charts.first.wait_for()
    wait_for(lambda: charts.count() >= 4, 30, what="loss, lr, grad norm and tokens/s charts")
    page.locator(".st-key-ft-compare [data-testid='stVegaLiteChart']").wait_for()
    assert open_store(home).get("adapter", f"tiny-lora-job{job_id}")
    run.get_by_role("button", name="Merge into a full model").wait_for()
    run.get_by_role("button", name="Chat with it").wait_for()
    page.wait_for_timeout(800)          # let the charts paint before the picture
    shot(page, "finetune")


def run_cpu_demo(page, label: str, objective: str, dataset: str):
    """On the Fine-tune page: pick the objective and dataset, the CPU preset, start; the run's view once it succeeded."""
    page.goto(f"{page.base_url}/finetune")
    page.get_by_role("button", name="Start fine-tuning").wait_for(timeout=60_000)
    form = page.locator(".st-key-ft-form")
    form.locator("label").get_by_text(label, exact=True).click()
    pick(page, f"ft_datasets_{objective}", dataset)
    form.get_by_text(f"objective: {objective}").wait_for()
    page.keyboard.press("Escape")
    page.locator(".st-key-ft_preset button[aria-label='Open']").click()
    page.get_by_role("option", name="CPU quick demo").click()
    form.get_by_text("preset: cpu_demo").wait_for()
    page.locator(".st-key-ft_submit button").click()
    run = page.locator(".st-key-ft-run")
    run.locator("[data-testid='job-state'][data-state='succeeded']").wait_for(state="attached", timeout=180_000)
    return run


def test_continued_pretraining_from_the_page_on_a_text_file(page, home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "wiki.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 20)
    datasets.register(home / "datasets" / "wiki.txt", "wiki", "upload", home, owner="local")
    page.set_viewport_size({"width": 1400, "height": 2200})
    run = run_cpu_demo(page, "Continued pre-training", "pretrain", "wiki")
    job_id = wait_for(lambda: [j.id for j in queue.list_jobs(kind="finetune", home=home, by=users.OPERATOR)], 30, what="a job")[0]
    assert queue.get(job_id, home, by=users.OPERATOR).spec["objective"] == "pretrain"
    run.locator("[data-testid='stVegaLiteChart']").first.wait_for()
    shot(page, "finetune-pretrain")


def test_import_a_dataset_info_and_run_dpo_from_the_page(page, home, tiny_model, tmp_path):
    import json
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"Who are you? {i}", "good": "I am a helpful assistant.",
                                         "bad": "The quick brown fox."}) + "\n" for i in range(8)))
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"identity_dpo": {"file_name": "pairs.jsonl", "ranking": True, "columns": {
        "prompt": "q", "chosen": "good", "rejected": "bad"}}, "hub_only": {"hf_hub_url": "someone/data"}}))
    page.set_viewport_size({"width": 1400, "height": 2200})
    page.goto(f"{page.base_url}/datasets")
    page.get_by_text("Upload a file").click()
    page.locator(".st-key-ds_upload input[type=file]").set_input_files([str(info), str(pairs)])
    page.get_by_role("button", name="Save to the workspace").click()
    report = page.locator(".st-key-ds_info_report")
    report.get_by_text("identity_dpo → dataset identity_dpo (preference, 8 rows)").wait_for()
    report.get_by_text("its data is on a hub (someone/data)").wait_for()
    page.get_by_text("identity_dpo.jsonl").wait_for()            # the imported dataset is opened

    run = run_cpu_demo(page, "DPO", "dpo", "identity_dpo")
    run.get_by_text("margin", exact=True).first.wait_for()
    run.get_by_text("reward_chosen", exact=True).first.wait_for()
    page.wait_for_timeout(800)          # let the charts paint before the picture
    shot(page, "finetune-dpo")
