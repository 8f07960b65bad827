"""A lesson, simulated: 30 students do the self-cognition lab (labs/self_cognition.yaml: make the dataset, fine-tune,
serve, check) on one simulated 80 GB GPU, in simulated time, through the worker's own ordering
(backend.runtime.queue.consider_order, with recent use) and placement (backend.placement.place).

Job sizes and durations come from the workbench's own estimates: the fine-tune's memory from
backend.pipeline.finetune.estimate and its duration from backend.pipeline.finetune.estimate_duration (the GPU calibration: no GPU
proof has measured a GPU run yet), the server's memory from the serve spec's own resources() (an adapter is merged
into a copy of the model and the base is served beside it) on a registry model whose weights file has the real
size (a sparse file), a check from the lab's prompts at an assumed decoding speed. Assumptions (printed): students
start within the first 5 minutes, press the next step 20 s after the last ended, stop their server once passed.

Prints when the median and the last student pass for each scenario; past 45 minutes, what the bottleneck is.

    .venv/bin/python bench/lesson.py
"""
from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)   # not bench/ (its queue.py)

from backend.access import users
from backend.pipeline import finetune as ft, labs
from backend.runtime import placement, queue
from backend.kinds import catalog as kinds  # noqa: E402
from backend.kinds import finetune as ft_spec, serve as serve_spec  # noqa: E402
from bench.fairshare import usage  # noqa: E402 - the same reading of store.usage_since
from backend.core.store import open_store  # noqa: E402

GPU_GB, STUDENTS, LESSON_S = 80.0, 30, 45 * 60
ARRIVE_S, THINK_S = 300.0, 20.0          # students start within 5 minutes; 20 s from a step's end to the next
SERVE_READY_S = ft.STARTUP_S["gpu"]      # loading a model on a GPU (the fine-tune's start-up figure)
DECODE_TOKENS_S, CHECK_START_S = 20.0, 3.0
ROWS, MEAN_TOKENS = 102, 60              # assets/datasets/shubot_self_cognition.jsonl

# InternLM2.5 chat models' shapes (config.json): hidden, layers, intermediate, vocab, kv heads x head dim
MODELS = {"internlm2_5-7b-chat": (4096, 32, 14336, 92544, 8 * 128),
          "internlm2_5-1_8b-chat": (2048, 24, 8192, 92544, 8 * 128)}


def info(name: str) -> dict:
    h, layers, inter, vocab, kv = MODELS[name]
    per_layer = {"attention.wqkv": (h, h + 2 * kv), "attention.wo": (h, h), "feed_forward.w1": (h, inter),
                 "feed_forward.w3": (h, inter), "feed_forward.w2": (inter, h)}
    linears = {f"model.layers.{i}.{k}": v for i in range(layers) for k, v in per_layer.items()}
    params = sum(a * o for a, o in linears.values()) + 2 * vocab * h
    return {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "auto_map": False, "hidden": h,
            "layers": layers, "intermediate": inter, "vocab": vocab, "heads": 32, "tied": False, "linears": linears,
            "params": params, "weight_bytes": 2}


def sizes(name: str, method: str, home: Path) -> dict:
    """(GB, seconds) of the fine-tune, GB of the server, from the workbench's own estimates."""
    spec = ft_spec.Spec(base_model=name, datasets=["self_cognition"], preset="xtuner", method=method)
    i = info(name)
    ft_gb = ft.estimate(spec, i)["total_gb"]
    ft_s = ft.estimate_duration(spec.model_dump(), ROWS, MEAN_TOKENS, i["params"], True, home)["seconds"]
    folder = home / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:           # sparse: its size, not its bytes
        f.truncate(i["params"] * 2)
    (home / "adapters" / name).mkdir(parents=True, exist_ok=True)
    store = open_store(home)
    store.put("model", name, str(folder), owner=users.OPERATOR_NAME, shared=True)
    store.put("adapter", f"{name}-lora", str(home / "adapters" / name), {"base_model": name}, owner=users.OPERATOR_NAME)
    serve_spec.gpus = lambda: [placement.GPU(0, "simulated", GPU_GB, 0.0)]      # the simulated GPU, for resources()
    serve_gb = kinds.asked(kinds.get("serve"), serve_spec.Spec(adapter=f"{name}-lora"), home=home, owner="local")["gpu_mem_gb"]
    prompts = labs.get("self_cognition", home).checks[0].args["prompts"]
    check_s = CHECK_START_S + 2 * len(prompts) * 32 / DECODE_TOKENS_S    # tuned and base, 32 tokens each
    return {"finetune": (ft_gb, ft_s), "serve": (serve_gb, SERVE_READY_S), "lab_check": (0.0, check_s)}


class SimJob(dict):
    __getattr__ = dict.__getitem__


STEPS = ["finetune", "serve", "lab_check"]


def simulate(size: dict, seed: int = 0) -> dict:
    rng = random.Random(seed)
    gpu = [placement.GPU(0, "simulated", GPU_GB, 0.0)]
    pending = sorted(({"owner": f"s{i:02d}", "step": 0, "submit": rng.uniform(0, ARRIVE_S)} for i in range(STUDENTS)),
                     key=lambda j: j["submit"])
    queued, active, done, passed, waits, peak, t, next_id = [], [], [], {}, {k: [] for k in STEPS}, 0.0, 0.0, 1
    while pending or queued or active:
        while pending and pending[0]["submit"] <= t:
            j = pending.pop(0)
            kind = STEPS[j["step"]]
            gb, secs = size[kind]
            queued.append(SimJob(j, id=next_id, priority=0, kind=kind, secs=secs,
                                 asked={"gpus": 1, "gpu_mem_gb": gb} if gb else {"cpu_slots": 0}))
            next_id += 1
        for j in queue.consider_order(queued, active, usage(done + active, t)):
            given = placement.place(j["asked"], gpu, active, 0)
            if given:
                queued.remove(j)
                # a server holds its memory until its owner's check passed (it ends then: see below)
                end = float("inf") if j["kind"] == "serve" else t + j["secs"]
                active.append(SimJob(j, given=given, start=t, end=end, ready=t + j["secs"]))
                waits[j["kind"]].append(t - j["submit"])
        peak = max(peak, sum(a["given"]["gpu_mem_gb"] for a in active))
        events = [a["end"] for a in active] + [a["ready"] for a in active if a["kind"] == "serve" and a["ready"] > t]
        t = min(events + [p["submit"] for p in pending[:1]])
        for a in [a for a in active if a["end"] <= t or (a["kind"] == "serve" and a["ready"] == t)]:
            if a["kind"] == "serve":                     # ready: the student presses "Check my lab"
                pending.append({"owner": a["owner"], "step": 2, "submit": t + THINK_S})
                a["ready"] = -1.0
                continue
            active.remove(a)
            done.append(a)
            if a["kind"] == "lab_check":
                passed[a["owner"]] = t
                for s in [s for s in active if s["owner"] == a["owner"] and s["kind"] == "serve"]:
                    active.remove(s)                     # passed: the student stops the server
                    done.append(SimJob(s, end=t))
            else:
                pending.append({"owner": a["owner"], "step": a["step"] + 1, "submit": t + THINK_S})
        pending.sort(key=lambda j: j["submit"])
    return {"passed": passed, "waits": waits, "peak": peak}


def bottleneck(size: dict, r: dict) -> str:
    """Why the last student passed late: where the time went."""
    ft_gb, serve_gb = size["finetune"][0], size["serve"][0]
    room = GPU_GB - placement.GPU_HEADROOM_GB
    mean_wait = {k: statistics.mean(w) if w else 0.0 for k, w in r["waits"].items()}
    worst = max(mean_wait, key=mean_wait.get)
    return (f"GPU memory: a server holds {serve_gb:.1f} GB (the merged copy and the base), a fine-tune {ft_gb:.1f} GB; "
            f"{int(room // serve_gb)} servers fit at once in {room:.1f} GB. Longest waits: {worst} "
            f"({mean_wait[worst] / 60:.1f} min on average; serve {mean_wait['serve'] / 60:.1f}, "
            f"fine-tune {mean_wait['finetune'] / 60:.1f}, check {mean_wait['lab_check'] / 60:.1f}).")


def main() -> None:
    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="lesson-"))
    home = Path(os.environ["WORKBENCH_HOME"])
    print(f"{STUDENTS} students, self-cognition lab, one {GPU_GB:.0f} GB GPU; students start within "
          f"{ARRIVE_S / 60:.0f} min, {THINK_S:.0f} s between steps; a server is stopped once its owner passed")
    print(f"{'scenario':<34} {'fine-tune':>16} {'server':>8} {'check':>6}  {'median pass':>11} {'last pass':>9} "
          f"{'peak GB':>7}")
    for name, method in (("internlm2_5-7b-chat", "qlora"), ("internlm2_5-7b-chat", "lora"),
                         ("internlm2_5-1_8b-chat", "lora")):
        size = sizes(name, method, home)
        r = simulate(size)
        times = sorted(r["passed"].values())
        assert len(times) == STUDENTS and r["peak"] <= GPU_GB - placement.GPU_HEADROOM_GB
        median, last = statistics.median(times), times[-1]
        print(f"{name + ' ' + method:<34} {size['finetune'][0]:>5.1f} GB {size['finetune'][1]:>4.0f} s "
              f"{size['serve'][0]:>5.1f} GB {size['lab_check'][1]:>4.0f} s  {median / 60:>9.1f} m {last / 60:>7.1f} m "
              f"{r['peak']:>7.1f}")
        if last > LESSON_S:
            print(f"  not within {LESSON_S // 60} min: {bottleneck(size, r)}")
    print(f"goal: all {STUDENTS} pass within {LESSON_S // 60} minutes")


if __name__ == "__main__":
    main()
