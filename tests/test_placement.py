"""Placement on GPUs (NVML can't exist here: GPUs are given as data) and CPU slots."""
import pytest

from backend.core.job import Job
from backend.runtime.placement import GPU, NeverFits, place

GPUS = [GPU(0, "A100", 80.0, 1.0), GPU(1, "A100", 80.0, 60.0)]


def running(gpus=(), mem=0.0, cpu_slots=0) -> Job:
    """A running job's row as the store gives it, holding what it was given."""
    row = dict.fromkeys(Job.__dataclass_fields__) | {
        "id": 1, "kind": "sleepy", "owner": "", "state": "running", "spec": {}, "asked": {}, "priority": 0,
        "label": "", "created_at": 0.0, "cancel_requested": 0,
        "given": {"gpus": list(gpus), "gpu_mem_gb": mem, "cpu_slots": cpu_slots}}
    return Job.from_row(row)


def test_gpu_job_goes_where_memory_is_free():
    assert place({"gpus": 1, "gpu_mem_gb": 30}, GPUS, [], 1)["gpus"] == [0]


def test_small_jobs_share_a_gpu_big_ones_wait():
    active = [running([0], 40)]
    assert place({"gpus": 1, "gpu_mem_gb": 30}, GPUS, active, 1)["gpus"] == [0]
    assert place({"gpus": 1, "gpu_mem_gb": 45}, GPUS, active, 1) is None


def test_never_fits_is_an_error_not_a_wait():
    with pytest.raises(NeverFits):
        place({"gpus": 1, "gpu_mem_gb": 100}, GPUS, [], 1)
    with pytest.raises(NeverFits):
        place({"gpus": 1, "gpu_mem_gb": 1}, [], [], 1)
    with pytest.raises(NeverFits):
        place({"cpu_slots": 2}, [], [], 1)


def test_cpu_slots():
    assert place({"cpu_slots": 1}, [], [], 1) == {"gpus": [], "gpu_mem_gb": 0.0, "cpu_slots": 1, "weight": 1}
    assert place({"cpu_slots": 1}, [], [running(cpu_slots=1)], 1) is None
    assert place({"cpu_slots": 0}, [], [running(cpu_slots=1)], 1)["cpu_slots"] == 0
