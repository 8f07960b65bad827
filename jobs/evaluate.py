"""evaluate: run OpenCompass on models x datasets, then read its summary, predictions and task logs.

The job writes an OpenCompass config (``config.py`` in the job folder) and runs the ``opencompass``
CLI on it with ``-w <job>/opencompass``, in the engine's own environment. OpenCompass exits 0 even
when a task failed (its summary shows ``-``), so the job reads the summary CSV and the task ``.out``
logs and fails with the real reason. Results: a table (dataset x model x metric) and the per-item
predictions (prompt, prediction, gold, correct) in result.json, and an ``eval`` registry entry.

Only the standard library, pydantic and jobs.common at top level: this module also validates specs
in the core environment.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


from backend.core import defaults
from backend.runtime import engines, server_auth
from backend.workspace import remote_code
from backend.core.errors import BAD_INPUT, CRASH, MISSING_ENGINE, OOM_TEXT, OUT_OF_MEMORY, UserError
from backend.runtime.procs import become_subreaper
from backend.kinds.evaluate import (ENDPOINT_SUGGESTION, MCQ_OPTIONS, DatasetRef, ModelRef, Spec, compass_data_cache,
                                    config_variable, custom_format, endpoint_problem, find_standard_config,
                                    first_record, missing_data)
from jobs.common import Cancelled, Job, JobError, run

ITEMS_MAX = 500                 # per (model, dataset) kept in result.json


# -- the OpenCompass config ----------------------------------------------------------------------
def custom_dataset_cfg(d: DatasetRef) -> dict:
    kind, _ = custom_format(d.path)
    rec = first_record(d.path) or {}
    if kind == "mcq":
        options = [c for c in MCQ_OPTIONS if c in rec]
        human = "Question: {question}" + "".join(f"\n{o}. {{{o}}}" for o in options) + "\nAnswer:"
        columns = ["question", *options]
        evaluator = {"type": "opencompass.datasets.custom.OptionSimAccEvaluator", "options": options}
    else:
        human, columns = "{question}", ["question"]
        evaluator = {"type": "jobs.evaluate_metrics.QAEvaluator"}
    reader = {"input_columns": columns, "output_column": "answer"}
    if d.limit:
        reader["test_range"] = f"[0:{d.limit}]"
    return {
        "abbr": d.name, "type": "opencompass.datasets.CustomDataset", "path": str(Path(d.path).resolve()),
        "reader_cfg": reader,
        "infer_cfg": {
            "prompt_template": {"type": "opencompass.openicl.icl_prompt_template.PromptTemplate",
                                "template": {"round": [{"role": "HUMAN", "prompt": human},
                                                      {"role": "BOT", "prompt": "{answer}"}]}},
            "retriever": {"type": "opencompass.openicl.icl_retriever.ZeroRetriever"},
            "inferencer": {"type": "opencompass.openicl.icl_inferencer.GenInferencer"}},
        "eval_cfg": {"evaluator": evaluator, "pred_role": "BOT"},
    }


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def compat_tokenizer(model_path: str, out: Path) -> str:
    """A tokenizer folder transformers 4.x can load. Models saved by transformers 5 (the core
    engine) name their tokenizer class ``TokenizersBackend``, unknown to 4.x: copy the tokenizer
    files with the generic fast class instead. Returns "" when the model's own folder is fine."""
    src = Path(model_path)
    try:
        cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if cfg.get("tokenizer_class") != "TokenizersBackend":
        return ""
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            (out / name).write_bytes((src / name).read_bytes())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.setdefault("model_input_names", ["input_ids", "attention_mask"])   # no token_type_ids for generate()
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(out)


API_RETRIES = 3           # attempts per request to an endpoint (OpenCompass's own loop)
API_TIMEOUT_S = 600       # one request to an endpoint; CPU servers queue requests
API_QPS = 8               # requests per second OpenCompass sends to one endpoint


def model_cfg(m: ModelRef, spec: Spec, tokenizer_path: str = "") -> dict:
    common = {"abbr": m.name, "max_out_len": spec.max_out_len, "batch_size": spec.batch_size,
              "max_seq_len": spec.max_seq_len}
    if m.url:
        # key "ENV": OpenCompass reads OPENAI_API_KEY from the environment (a job secret), never the config;
        # a workbench endpoint's own key (it lives only as long as its server) is written in.
        # tokenizer_path: token counts for max_seq_len; without one OpenCompass falls back to tiktoken's
        # gpt-4 encoding, which it downloads (fails offline).
        return {"type": "opencompass.models.OpenAISDK", "path": m.api_model or m.name,
                "key": server_auth.key_for_url(m.url, defaults.home()) or "ENV",
                "openai_api_base": m.url.rstrip("/"), "tokenizer_path": tokenizer_path or m.tokenizer_path or None,
                "temperature": 0.0, "query_per_second": API_QPS, "retry": API_RETRIES, "timeout": API_TIMEOUT_S,
                "meta_template": {"round": [{"role": "HUMAN", "api_role": "HUMAN"},
                                            {"role": "BOT", "api_role": "BOT", "generate": True}]},
                "run_cfg": {"num_gpus": 0}, **common}
    # OpenCompass loads tokenizer and model with trust_remote_code=True unless told: pass the registry's opt-in
    remote = remote_code.trust(m.path, defaults.home())
    return {"type": "opencompass.models.HuggingFacewithChatTemplate", "path": m.path,
            "tokenizer_path": tokenizer_path or None, "peft_path": m.peft_path or None,
            "tokenizer_kwargs": {"trust_remote_code": remote},
            "model_kwargs": {"device_map": "auto" if spec.gpus else "cpu", "trust_remote_code": remote,
                             "torch_dtype": "auto" if spec.gpus else "torch.float32"},
            "run_cfg": {"num_gpus": spec.gpus}, **common}


def write_config(spec: Spec, path: Path, package_dir: Path | None) -> Path:
    """Write the OpenCompass config for ``spec`` (plain data, types as dotted names) in ``path``'s folder."""
    tokenizers = {m.name: compat_tokenizer(m.path or m.tokenizer_path, path.parent / "tokenizers" / m.name)
                  for m in spec.models if m.path or m.tokenizer_path}
    imports, std = [], []
    for d in spec.datasets:
        if d.config:
            cfg_file = find_standard_config(d.config, package_dir) if package_dir else None
            if cfg_file is None:
                raise JobError(f"dataset {d.name}: no standard OpenCompass config named {d.config}", BAD_INPUT)
            module = ".".join(cfg_file.relative_to(package_dir.parent).with_suffix("").parts)
            var = config_variable(cfg_file)
            imports.append(f"    from {module} import {var}")
            rng = f", test_range='[0:{d.limit}]'" if d.limit else ""
            # the spec's max_out_len wins over the config's own (gsm8k_gen asks for 512)
            std.append(f"[dict(x, reader_cfg=dict(x['reader_cfg']{rng}), infer_cfg=dict(x['infer_cfg'], "
                       f"inferencer=dict(x['infer_cfg']['inferencer'], max_out_len={spec.max_out_len}))) "
                       f"for x in {var}]")
    workers = max(1, spec.gpus and 8 // spec.gpus)
    cfg = {
        "models": [model_cfg(m, spec, tokenizers.get(m.name, "")) for m in spec.models],
        "infer": {"partitioner": {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": 1},
                  "runner": {"type": "opencompass.runners.LocalRunner", "max_num_workers": workers,
                             "task": {"type": "opencompass.tasks.OpenICLInferTask"}}},
        "eval": {"partitioner": {"type": "opencompass.partitioners.NaivePartitioner"},
                 "runner": {"type": "opencompass.runners.LocalRunner", "max_num_workers": max(1, os.cpu_count() or 1),
                            "task": {"type": "opencompass.tasks.OpenICLEvalTask", "dump_details": True}}},
    }
    lines = ["# Written by the workbench evaluate job. Run it directly with: opencompass config.py -w <dir>"]
    if imports:
        lines += ["from mmengine.config import read_base", "", "with read_base():", *imports]
    lines.append("")
    for key, value in cfg.items():
        lines.append(f"{key} = {value!r}")
    custom = [custom_dataset_cfg(d) for d in spec.datasets if d.path]
    lines.append(f"datasets = {custom!r}" + "".join(f" + {s}" for s in std))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- reading OpenCompass's outputs ---------------------------------------------------------------
def read_summary(run_dir: Path) -> list[dict]:
    """Rows of the summary CSV: {dataset, version, metric, mode, <model>: score or None}."""
    files = sorted((run_dir / "summary").glob("summary_*.csv"))
    if not files:
        return []
    with open(files[-1], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    fixed = {"dataset", "version", "metric", "mode"}
    for row in rows:
        for k, v in row.items():
            if k not in fixed:
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = None
    return rows


def _correct(detail) -> bool | None:
    if not isinstance(detail, dict):
        return None
    for key in ("correct", "is_correct"):
        if key in detail:
            v = detail[key]
            return bool(v[0] if isinstance(v, list) and v else v)
    preds = detail.get("predictions")
    if isinstance(preds, list) and preds and isinstance(preds[0], dict):
        return _correct(preds[0])
    return None


def _first(v):
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def _scored(detail) -> dict:
    """What the scorer compared, when its details say: the prediction after post-processing
    (``extracted``, e.g. gsm8k's last number) and the processed gold (``reference``, e.g. "7" of
    "...#### 7")."""
    if not isinstance(detail, dict):
        return {}
    out = {}
    if "pred" in detail:
        out["extracted"] = _first(detail["pred"])
    for key in ("answer", "references", "gold"):
        if key in detail:
            out["reference"] = _first(detail[key])
            break
    return out


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_items(run_dir: Path, model: str, dataset: str) -> list[dict]:
    """Per-item prompt, prediction, gold and correctness of one (model, dataset); ``extracted`` and
    ``reference`` when the scorer's details give them."""
    preds = _load(run_dir / "predictions" / model / f"{dataset}.json") or {}
    result = _load(run_dir / "results" / model / f"{dataset}.json") or {}
    details = result.get("details") or []
    if isinstance(details, dict):
        details = [v for k, v in sorted(details.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1)
                   if k.isdigit()]
    items = []
    for i, (key, p) in enumerate(sorted(preds.items(), key=lambda kv: int(kv[0]))):
        if i >= ITEMS_MAX:
            break
        prompt = p.get("origin_prompt")
        if isinstance(prompt, list):   # chat rounds
            prompt = "\n".join(str(r.get("prompt", r)) if isinstance(r, dict) else str(r) for r in prompt)
        detail = details[i] if i < len(details) else None
        items.append({"model": model, "dataset": dataset, "index": int(key), "prompt": prompt,
                      "prediction": p.get("prediction"), "gold": p.get("gold"),
                      "correct": _correct(detail), **_scored(detail)})
    return items


ERROR_LINE = re.compile(r"^(\w+(\.\w+)*(Error|Exception|Exit)\b.*|.*\bout of memory\b.*|AssertionError.*)$", re.I)


def task_errors(run_dir: Path) -> list[tuple[str, str]]:
    """(task log, last error line) for every task log under logs/ that records a failure."""
    out = []
    logs = sorted((run_dir / "logs").rglob("*.out"), key=lambda p: (p.parent.parent.name != "infer", str(p)))
    for log in logs:   # inference first: a failed eval task usually only says its predictions are missing
        text = log.read_text(encoding="utf-8", errors="replace")
        if "Traceback" not in text and "task fail" not in text.lower():
            continue
        errors = [ln.strip() for ln in text.splitlines() if ERROR_LINE.match(ln.strip())]
        out.append((str(log.relative_to(run_dir)), errors[-1] if errors else text.strip().splitlines()[-1]))
    return out


def classify(reason: str) -> tuple[str, str]:
    low = reason.lower()
    if "calling openai api failed" in low or "apiconnectionerror" in low or "connection refused" in low:
        return BAD_INPUT, "the endpoint stopped answering: " + ENDPOINT_SUGGESTION
    if "tiktoken" in low or "openaipublic" in low:
        return BAD_INPUT, ("give the endpoint model a tokenizer_path (a local tokenizer folder): OpenCompass counts "
                           "tokens with it, and without one downloads tiktoken's encoding")
    if "exceeds max_seq_len" in low:
        return BAD_INPUT, "raise max_seq_len (up to the model's context length) or use shorter prompts"
    if OOM_TEXT.search(reason):
        return OUT_OF_MEMORY, "use a smaller batch size or max out length, or a GPU"
    if "modulenotfounderror" in low or "importerror" in low:
        return MISSING_ENGINE, "reinstall the opencompass engine (engine_install with reinstall: true)"
    if any(s in low for s in ("oserror", "does not appear to have", "unrecognized", "safetensors", "config.json",
                              "adapter_config", "filenotfounderror", "connection")):
        return BAD_INPUT, "check that the model, adapter or endpoint can be loaded by transformers 4.x"
    return CRASH, "see the task logs in the job's opencompass folder"


# -- the job -------------------------------------------------------------------------------------
def expected_tasks(spec: Spec, config: Path, python: str, env: dict) -> list[str]:
    """Dataset abbrs the run will produce (standard configs expand to several)."""
    abbrs = [d.name for d in spec.datasets if d.path]
    if any(d.config for d in spec.datasets):
        code = ("import json,sys; from mmengine.config import Config; "
                "c = Config.fromfile(sys.argv[1]); print(json.dumps([d['abbr'] for d in c.datasets]))")
        out = subprocess.run([python, "-c", code, str(config)], capture_output=True, text=True, env=env,
                             cwd=config.parent)
        if out.returncode != 0:
            raise JobError(f"the OpenCompass config could not be read: {out.stderr.strip().splitlines()[-1:]}",
                           BAD_INPUT)
        abbrs = json.loads(out.stdout.strip().splitlines()[-1])
    return abbrs


def stop_children(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """On cancel: SIGTERM the OpenCompass CLI and its tasks (this job's process group), then wait for
    every child to exit, so none is left running or unreaped when the job ends."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getpgrp() == os.getpid():           # the worker started the job as its own group leader
        os.killpg(os.getpgrp(), signal.SIGTERM)
    else:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:             # no children left
            return


def opencompass_env(job: Job) -> dict:
    env = dict(os.environ, COMPASS_DATA_CACHE=str(compass_data_cache(job.home)),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    env.setdefault("OPENAI_API_KEY", "EMPTY")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def dequantized(m: ModelRef, job: Job) -> ModelRef:
    """A GGUF export as a model folder OpenCompass loads: transformers' GGUF loader, run in the core environment
    (this engine's has no gguf package), writes it into the job folder."""
    if not m.gguf_file:
        return m
    out = job.dir / "gguf" / m.name
    job.message(f"{m.name}: dequantizing {m.gguf_file} with transformers' GGUF loader")
    cmd = engines.dequantize_command(Path(m.path) / m.gguf_file, out, job.home)
    if subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode != 0:
        raise JobError(UserError("err.gguf.dequantize", name=m.name), BAD_INPUT)
    return m.model_copy(update={"path": str(out), "gguf_file": ""})


def main(spec: Spec, job: Job) -> dict:
    import importlib.util
    found = importlib.util.find_spec("opencompass")
    if found is None:
        raise JobError("OpenCompass is not installed in this environment", MISSING_ENGINE,
                       "run an engine_install job for the opencompass engine")
    package_dir = Path(found.origin).parent
    cache = compass_data_cache(job.home)
    if os.environ.get("DATASET_SOURCE") not in ("ModelScope", "HF"):
        for d in spec.datasets:
            cfg_file = find_standard_config(d.config, package_dir) if d.config else None
            missing = missing_data(cfg_file, package_dir, cache) if cfg_file else []
            if missing:
                raise JobError(f"dataset {d.name}: the data of {d.config} is not in COMPASS_DATA_CACHE "
                               f"({cache}): missing {', '.join(missing)}", BAD_INPUT,
                               "unpack OpenCompass's data archive there, or set DATASET_SOURCE=ModelScope")

    for m in spec.models:
        problem = endpoint_problem(m.url, server_auth.key_for_url(m.url, home=job.home) or os.environ.get("OPENAI_API_KEY", ""), home=job.home) \
            if m.url else ""
        if problem:
            raise JobError(f"model {m.name}: {problem}", BAD_INPUT, ENDPOINT_SUGGESTION)

    spec = spec.model_copy(update={"models": [dequantized(m, job) for m in spec.models]})
    config = write_config(spec, job.dir / "config.py", package_dir)
    work = job.dir / "opencompass"
    env = opencompass_env(job)
    abbrs = expected_tasks(spec, config, sys.executable, env)
    models = [m.name for m in spec.models]
    total = 2 * len(models) * len(abbrs)
    job.message(f"evaluating {len(models)} model(s) on {len(abbrs)} dataset(s): {total} tasks (infer + eval)")
    cmd = [sys.executable, "-m", "opencompass.cli.main", str(config), "-w", str(work)]
    print("$ " + " ".join(cmd), flush=True)
    become_subreaper()
    proc = subprocess.Popen(cmd, cwd=job.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace")
    pump = threading.Thread(target=lambda: [sys.stdout.write(line) for line in proc.stdout], daemon=True)
    pump.start()
    done: set[tuple[str, str, str]] = set()
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            for run_dir in work.glob("*/"):
                for stage in ("predictions", "results"):
                    for m in models:
                        for a in abbrs:
                            key = (stage, m, a)
                            if key not in done and (run_dir / stage / m / f"{a}.json").exists():
                                done.add(key)
                                job.progress(len(done), total, "tasks",
                                             f"{'inferred' if stage == 'predictions' else 'scored'} {m} / {a}",
                                             force=True)
    except Cancelled:
        stop_children(proc)
        raise
    pump.join(5)
    runs = sorted(p for p in work.glob("*/") if p.is_dir())
    if proc.returncode != 0 or not runs:
        raise JobError(f"opencompass exited with code {proc.returncode}: see the log", CRASH)
    run_dir = runs[-1]
    rows = read_summary(run_dir)
    table = [{"dataset": r["dataset"], "metric": r["metric"], "mode": r["mode"], "model": m, "score": r.get(m)}
             for r in rows for m in models]
    failed = sorted({(t["model"], t["dataset"]) for t in table if t["score"] is None})
    if not rows or failed:
        errors = task_errors(run_dir)
        errors = [e for e in errors if e[0].startswith("logs/infer")] or errors   # the root cause first
        reason = "; ".join(f"{log}: {line}" for log, line in errors[:3]) or "no task log records an error"
        what = ", ".join(f"{m} on {d}" for m, d in failed[:6]) or "every task (no summary was written)"
        cls, suggestion = classify(reason)
        raise JobError(f"OpenCompass task(s) failed: {what}. {reason}", cls, suggestion)
    items = [it for m in models for a in abbrs for it in read_items(run_dir, m, a)]
    job.progress(total, total, "tasks", "done", force=True)
    result = {"table": table, "items": items, "models": [m.model_dump() for m in spec.models],
              "datasets": [d.model_dump() for d in spec.datasets], "run_dir": str(run_dir),
              "config": str(config)}
    result["registered"] = register(spec, job, table)
    return result


def register(spec: Spec, job: Job, table: list[dict]) -> str:
    """The run as an ``eval`` registry entry linked to the models and datasets it measured."""
    name = spec.name or f"eval-{job.id}"
    job.register("eval", name, job.dir, {
        "models": [m.name for m in spec.models], "datasets": [d.name for d in spec.datasets],
        "peft": {m.name: m.peft_path for m in spec.models if m.peft_path}, "table": table,
    })
    return name


if __name__ == "__main__":
    run(main, Spec)
