"""The quantize job: bitsandbytes NF4 on the CPU for real (through a burst worker, then served by the
transformers server), LMDeploy AWQ refused at submit without a GPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.access import users
from backend.pipeline import chat
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import endpoint_of, wait_for


@pytest.fixture
def tiny_registered(home, tmp_path):
    """The tiny Llama, 64 wide: bitsandbytes' CPU kernels quantise in blocks of 64 weights."""
    from tests.fixtures.tiny_model import make_tiny_llama
    open_store(home).put("model", "tiny", str(make_tiny_llama(tmp_path / "tiny64", hidden=64)), {"source": "test"}, owner="local")
    return "tiny"


def test_awq_is_refused_without_a_gpu(home, tiny_registered):
    with pytest.raises(queue.SubmitError, match="AWQ \\(W4A16\\) quantises on CUDA GPUs only"):
        queue.submit("quantize", {"model": "tiny", "method": "awq_w4a16", "calib_samples": 64}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="no model named 'nope'"):
        queue.submit("quantize", {"model": "nope"}, home=home, owner="local")
    with pytest.raises(queue.SubmitError, match="group_size"):
        queue.submit("quantize", {"model": "tiny", "group_size": 100}, home=home, owner="local")


def test_awq_command(tmp_path):
    from backend.kinds.quantize import Spec
    from jobs.quantize import awq_command
    cmd = awq_command(Spec(model="m", method="awq_w4a16", calib_samples=64, group_size=64), tmp_path / "s", tmp_path / "o")
    assert cmd[0].endswith("/lmdeploy") and cmd[1:4] == ["lite", "auto_awq", str(tmp_path / "s")]
    assert cmd[cmd.index("--calib-samples") + 1] == "64" and cmd[cmd.index("--w-group-size") + 1] == "64"
    assert cmd[cmd.index("--calib-dataset") + 1] == "wikitext2" and cmd[cmd.index("--w-bits") + 1] == "4"


@pytest.mark.slow
def test_nf4_quantizes_registers_and_serves_on_cpu(home, worker, tiny_registered):
    job_id = queue.submit("quantize", {"model": "tiny"}, home=home, owner="local")
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state in ("succeeded", "failed"), 300, 0.5, "the quantize job")
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "succeeded", job.error_message
    entry = open_store(home).get("model", "tiny-bnb-nf4")
    folder = Path(entry.path)
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert entry.meta["quantized_from"] == "tiny" and entry.meta["lineage"]["quantize_job"] == job_id
    with pytest.raises(queue.SubmitError, match="already exists"):
        queue.submit("quantize", {"model": "tiny"}, home=home, owner="local")

    serve_id = queue.submit("serve", {"model": "tiny-bnb-nf4"}, home=home, owner="local")
    ep = endpoint_of(home, serve_id, timeout=300)
    stats: dict = {}
    "".join(chat.stream_chat(ep, chat.build_messages([], "Hello"), temperature=0.0, max_tokens=4, stats=stats, by=users.OPERATOR, home=home))
    assert stats["tokens"] >= 1
    queue.cancel(serve_id, home, by=users.OPERATOR)
