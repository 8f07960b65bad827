"""What this machine has (GPUs through NVML, else CPU slots) and where a job fits."""
from __future__ import annotations

from dataclasses import dataclass

from backend.core.errors import UserError
from backend.core.job import Job

GPU_HEADROOM_GB = 0.5      # kept free on every GPU for the CUDA context of a new process


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    used_gb: float


def gpus() -> list[GPU]:
    """GPUs seen by NVML; an empty list where there is no driver or no GPU."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:   # noqa: BLE001 - no driver, no library: CPU only
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(GPU(i, name.decode() if isinstance(name, bytes) else name,
                           mem.total / 2**30, mem.used / 2**30))
        return out
    finally:
        pynvml.nvmlShutdown()


class NeverFits(UserError):
    """The job asks for more than this machine has at all."""


def on_cluster(asked: dict, executor: str) -> dict:
    """What a job sent to a cluster is recorded as holding: the scheduler picks its GPUs, whole ones, so an hour
    of it counts its GPUs in GPU-hours (or its CPU slots when it asks for none), as on this machine."""
    return {"gpus": [], "gpu_mem_gb": 0.0, "cpu_slots": 0, "executor": executor,
            "weight": int(asked.get("gpus") or 0) or int(asked.get("cpu_slots") or 0)}


def place(asked: dict, gpu_list: list[GPU], active: list[Job], cpu_slots: int) -> dict | None:
    """Resources to give a job now, or None if it must wait. ``active`` are the running jobs' rows
    (their ``given`` holds what they were placed on). Raises NeverFits if it can never run here.
    ``weight`` is what an hour of the job counts as in GPU-hours: the share of each GPU's memory it holds
    (a whole GPU, or a GPU job with no memory estimate: 1), or its CPU slots on a machine without GPUs."""
    n_gpus = int(asked.get("gpus") or 0)
    if n_gpus:
        if len(gpu_list) < n_gpus:
            raise NeverFits("err.res.gpus", n=n_gpus, have=len(gpu_list))
        mem = float(asked.get("gpu_mem_gb") or 0)
        if mem > max(g.total_gb for g in gpu_list) - GPU_HEADROOM_GB:
            raise NeverFits("err.res.gpu_mem", mem=mem, largest=max(g.total_gb for g in gpu_list))
        reserved = {g.index: 0.0 for g in gpu_list}
        for job in active:
            given = job.given or {}
            for i in given.get("gpus", []):
                reserved[i] = reserved.get(i, 0.0) + float(given.get("gpu_mem_gb") or 0)
        free = {g.index: g.total_gb - max(g.used_gb, reserved[g.index]) - GPU_HEADROOM_GB for g in gpu_list}
        fits = sorted((i for i in free if free[i] >= mem), key=lambda i: -free[i])
        if len(fits) < n_gpus:
            return None
        total = {g.index: g.total_gb for g in gpu_list}
        chosen = sorted(fits[:n_gpus])
        return {"gpus": chosen, "gpu_mem_gb": mem, "cpu_slots": 0,
                "weight": round(sum(min(1.0, mem / total[i]) if mem else 1.0 for i in chosen), 4)}
    want = int(asked.get("cpu_slots") or 0)
    if want > cpu_slots:
        raise NeverFits("err.res.cpu_slots", n=want, have=cpu_slots)
    used = sum(int((j.given or {}).get("cpu_slots") or 0) for j in active)
    if used + want > cpu_slots:
        return None
    return {"gpus": [], "gpu_mem_gb": 0.0, "cpu_slots": want, "weight": want}
