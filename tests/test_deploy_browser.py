"""The Deploy page in a real browser: quantise the tiny model from the page (bitsandbytes NF4, on the CPU),
start a continuous-batching server for each variant, measure each (1 client, then 8 at once) and see
both side by side with the ratios against the original."""
from __future__ import annotations

import pytest

from backend.access import users
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import shot, wait_for


def measured(home, name: str) -> dict:
    e = open_store(home).get("model", name)
    return (e.meta.get("deploy") or {}) if e else {}


def serve_and_measure(page, home, name: str) -> None:
    before = len(queue.list_jobs(kind="serve", home=home, by=users.OPERATOR))
    page.reload()
    page.locator(f".st-key-deploy_start_{name} button").click()
    wait_for(lambda: len(queue.list_jobs(kind="serve", home=home, by=users.OPERATOR)) > before, 30, 0.2, f"a serve job for {name}")
    def live():
        page.reload()
        page.locator(".st-key-deploy_table").wait_for()
        return page.locator(f".st-key-deploy_measure_{name}").count()
    wait_for(live, 300, 2, f"a server for {name}")
    page.locator(f".st-key-deploy_measure_{name} button").click()
    wait_for(lambda: measured(home, name).get("tps_8"), 300, 1, f"{name} to be measured")
    job_id = next(j.id for j in queue.list_jobs(home=home, by=users.OPERATOR) if j.kind == "serve" and j.state == "running")
    queue.cancel(job_id, home, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 60, 0.5, "the server to stop")


@pytest.mark.slow
@pytest.mark.browser
def test_deploy_quantizes_and_compares_variants(home, tmp_path, page):
    from tests.fixtures.tiny_model import make_tiny_llama
    open_store(home).put("model", "tiny", str(make_tiny_llama(tmp_path / "tiny64", hidden=64)), {"source": "test"}, owner="local")
    page.goto(page.base_url + "/deploy")
    page.get_by_text("Quantize this model").click()
    page.locator(".st-key-deploy_quantize_go button").click()
    wait_for(lambda: open_store(home).get("model", "tiny-bnb-nf4"), 300, 1, "the quantised copy")
    page.reload()
    page.locator(".st-key-deploy_start_tiny-bnb-nf4").wait_for()

    for name in ("tiny", "tiny-bnb-nf4"):
        serve_and_measure(page, home, name)
    page.reload()
    table = page.locator(".st-key-deploy_table")
    table.get_by_text("sized from the memory free").wait_for()
    base, q = measured(home, "tiny"), measured(home, "tiny-bnb-nf4")
    assert base["memory_gb"] > 0 and q["memory_gb"] > 0 and base["ttft_ms"] > 0 and q["kv_cache_gb"] > 0
    assert base["continuous_batching"] and q["tps_1"] > 0
    shot(page, "deploy-compare")
