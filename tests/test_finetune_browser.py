"""The Fine-tune page as a person sees it: pick a preset, see the estimate and YAML, start a run on
the tiny model, watch the loss chart fill, compare runs."""
import pytest

from backend import queue
from backend.store import open_store
from tests.conftest import pick, shot, wait_for

pytestmark = pytest.mark.browser


def test_submit_a_tiny_run_from_the_page_and_see_the_loss_chart(page, home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model))
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
    job_id = wait_for(lambda: [j["id"] for j in queue.list_jobs(kind="finetune", home=home)], 30, what="a job")[0]
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
