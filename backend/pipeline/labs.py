"""Labs as data: one YAML file per lab (``labs/<id>.yaml`` in the checkout, or ``<home>/labs/`` for an
instructor's own), its goal, its steps (the page to open and a prefilled spec) and its checks.

A check inspects the student's real artifacts (registry entries, job results, a live server it asks) and
runs in the ``lab_check`` job (jobs/lab_check.py), whose owner is the student checked: it reads only
what they own (``mine``). A passed check writes evidence signed with the workspace key
(HMAC-SHA256 over canonical JSON); ``verify`` says whether a file is genuine and unchanged.

Files are re-read when their mtime or size changes; a malformed file is refused with a keyed sentence
naming the file and line, and the other labs keep working. A lab naming a check that does not exist is
not shown to students.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import inspect
import io
import json
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.access import users
from backend.core import defaults, i18n, paths
from backend.pipeline import chat, deploy, evidence_page, finetune, rag, rag_eval
from backend.runtime import events, logs, placement, queue
from backend.workspace import datasets, image_text, models
from backend.core.errors import UserError
from backend.core.paths import job_dir
from backend.core.registry import Entry
from backend.core.states import JobState
from backend.core.store import Store, open_store

LABS_DIR = defaults.ROOT / "labs"
MAX_BYTES = 64 * 1024                    # a lab file larger than this is refused unread
KIND = "lab_check"
EVIDENCE = "evidence.json"               # in the check job's artifacts
HASH_MAX_BYTES = 1 << 30                 # key files larger than this are recorded by size, not hashed
PAGES = ("datasets", "models", "finetune", "evaluate", "chat", "deploy", "agent", "xcomposer", "jobs", "knowledge")
SERVERS = ("serve", "vlm", "rag_serve")   # a step of these kinds is done while its server runs
SELF_COGNITION_SOURCE = datasets.SAMPLES_DIR / "shubot_self_cognition.jsonl"
SAMPLE_NAMES = ("ShuBot (小书)", "小书（ShuBot）", "ShuBot", "小书")   # the sample's assistant, both ways: the student's name
ASSISTANT_NAME = re.compile(r"^[\w\u4e00-\u9fff][\w\u4e00-\u9fff .-]{0,31}$")


class LabError(UserError):
    """A lab file that can't be used, or a step that can't start."""


class Refused(LabError, users.Refused):
    pass


class Missing(LabError):
    """What a check did not find: the sentence the student reads."""


# -- the lab file ------------------------------------------------------------------------------------
class Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: str = Field(min_length=1)
    zh: str = Field(min_length=1)

    def __call__(self, lang: str) -> str:
        return self.zh if lang == "zh" else self.en


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    label: Text
    default: str = ""


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text
    page: Literal[PAGES]                                    # the page that does it by hand
    kind: str = ""                                          # a job kind "Start this step" queues with ``spec``
    action: Literal["", "self_cognition_dataset"] = ""      # or a backend action (instant)
    spec: dict = {}                                         # strings may name {user}, {adapter}, a param...
    done_when: Literal["", "image_dataset"] = ""            # a by-hand step: done once the student has this artifact


class CheckRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    check: str
    args: dict = {}


class Lab(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    camp: Text                                              # the camp lab it stands for
    title: Text
    goal: Text
    params: list[Param] = []
    steps: list[Step] = Field(min_length=1)
    checks: list[CheckRef] = Field(min_length=1)
    order: int = 100

    @property
    def available(self) -> bool:
        """Every check it names exists (else students don't see it)."""
        return all(c.check in CHECKS for c in self.checks)


_cache: dict[Path, tuple[tuple[int, int], Lab | LabError]] = {}


def _line(text: str, loc: tuple) -> int:
    """The 1-based line of the YAML node at pydantic's ``loc`` (the deepest one found)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1
    line = node.start_mark.line if node else 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line
    return line + 1


def parse(path: Path) -> Lab:
    """One lab file, validated; LabError naming the file and line when it is malformed."""
    where = path.name
    if path.stat().st_size > MAX_BYTES:
        raise LabError("err.lab.too_big", file=where, max_kb=MAX_BYTES // 1024)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark and mark.line >= len(text.splitlines()):        # at the end: name where the open thing began
            mark = getattr(e, "context_mark", None) or mark
        raise LabError("err.lab.yaml", file=where, line=mark.line + 1 if mark else 1,
                       problem=getattr(e, "problem", None) or str(e)) from None
    if not isinstance(data, dict):
        raise LabError("err.lab.not_mapping", file=where)
    try:
        lab = Lab.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise LabError("err.lab.invalid", file=where, line=_line(text, err["loc"]),
                       field=".".join(map(str, err["loc"])) or "-", problem=err["msg"]) from None
    if lab.id != path.stem:
        raise LabError("err.lab.id_mismatch", file=where, line=_line(text, ("id",)), id=lab.id)
    for i, c in enumerate(lab.checks):          # args a check does not take (a check not here yet: unchecked)
        try:
            if c.check in CHECKS:
                inspect.signature(CHECKS[c.check]).bind(None, **c.args)
        except TypeError as te:
            raise LabError("err.lab.invalid", file=where, line=_line(text, ("checks", i, "args")),
                           field=f"checks.{i}.args", problem=str(te)) from None
    return lab


def files(home: Path) -> list[Path]:
    """Lab files: the checkout's, then the workspace's (same id: the workspace's wins)."""
    dirs = [LABS_DIR, home / "labs"]
    return [p for d in dirs if d.is_dir() for p in sorted(d.glob("*.yaml"))]


def load(home: Path) -> tuple[dict[str, Lab], list[LabError]]:
    """Every lab by id (ordered) and the problems of the files refused; re-reads only files that changed."""
    labs, problems = {}, []
    for path in files(home):
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = _cache.get(path)
        if cached is None or cached[0] != stamp:
            try:
                cached = stamp, parse(path)
            except LabError as e:
                cached = stamp, e
            except OSError as e:
                cached = stamp, LabError("err.lab.unreadable", file=path.name, error=str(e))
            _cache[path] = cached
        if isinstance(cached[1], LabError):
            problems.append(cached[1])
        else:
            labs[cached[1].id] = cached[1]
    return dict(sorted(labs.items(), key=lambda kv: (kv[1].order, kv[0]))), problems


def visible(by, home: Path) -> list[Lab]:
    """The labs ``by`` sees: every available one; an instructor (or the shell) also those with a missing check."""
    user = users.acting(by, home=home)
    return [lab for lab in load(home)[0].values() if lab.available or user.instructor]


def _no_check(lab: Lab) -> LabError:
    return LabError("err.lab.no_check", lab=lab.id, checks=", ".join(c.check for c in lab.checks if c.check not in CHECKS))


def get(lab_id: str, home: Path) -> Lab:
    lab = load(home)[0].get(lab_id)
    if lab is None:
        raise LabError("err.lab.unknown", lab=lab_id, known=", ".join(load(home)[0]) or "-")
    if not lab.available:
        raise _no_check(lab)
    return lab


def problems(home: Path) -> list[LabError]:
    """What keeps a lab from students: files refused, and labs whose check does not exist (for instructors)."""
    found, refused = load(home)
    return refused + [_no_check(lab) for lab in found.values() if not lab.available]


# -- whose is it -------------------------------------------------------------------------------------
def mine(type: str, student: str, home: Path) -> list[Entry]:
    """``student``'s registry entries of ``type``, newest first: the entries they own (every row has its owner,
    the one who made it), the one rule every check uses to decide what is the student's."""
    return [e for e in open_store(home).items(type) if e.owner == student]


# -- steps ---------------------------------------------------------------------------------------------
def self_cognition_dataset(name: str, by, home: Path) -> Entry:
    """The bundled self-cognition sample with the assistant called ``name``: a dataset of ``by``'s own."""
    user = users.acting(by, home=home)
    owner = user.name
    name = name.strip()
    if not ASSISTANT_NAME.fullmatch(name) or any(n.lower() in name.lower() for n in SAMPLE_NAMES):
        raise LabError("err.lab.bad_name", name=name)
    text = SELF_COGNITION_SOURCE.read_text(encoding="utf-8")
    for old in SAMPLE_NAMES:
        text = text.replace(old, name)
    data = text.encode()
    users.check_disk(owner, len(data), datasets.DatasetRefused, home)
    ds = datasets.unique_name(datasets.safe_name(f"self_cognition-{owner}"), home)
    target = datasets.datasets_dir(home) / f"{ds}.jsonl"
    paths.atomic_write(target, data)
    entry = datasets.register(target, ds, "lab", home, owner=owner, self_cognition={"name": name})
    users.audit(owner, "lab_dataset", ds, detail=name, home=home)
    return entry


def _newest(type: str, student: str, home: Path | None, pred=None) -> str | None:
    return next((e.name for e in mine(type, student, home) if pred is None or pred(e)), None)


def _image_dataset(student: str, home: Path) -> str | None:
    """The student's newest image-text dataset (an upload whose rows name images)."""
    return _newest("dataset", student, home, lambda e: bool(e.meta.get("images")))


def context(student: str, params: dict | None = None, *, home: Path) -> dict:
    """What a step's spec may name: {user}, {bundled}, {preset}, the student's newest {dataset} (self-cognition),
    {adapter}, {model}, {quantized}, {kb}, their live model {endpoint} and knowledge-base {rag_endpoint}, and the
    lab's params."""
    theirs = {e.name for e in mine("endpoint", student, home)}
    live_ = [e for e in chat.endpoints(home, by=users.OPERATOR) if e["name"] in theirs and not e.get("base_of")]
    gpu = placement.gpus()
    ctx = {"user": student, "bundled": models.BUNDLED_NAME, "preset": finetune.default_preset(gpu),
           "dataset": _newest("dataset", student, home, lambda e: "self_cognition" in e.meta),
           "adapter": _newest("adapter", student, home), "model": _newest("model", student, home),
           "quantized": _newest("model", student, home, lambda e: bool(e.meta.get("quantized_from"))),
           "kb": _newest("kb", student, home),
           "image_dataset": _image_dataset(student, home),
           "vlm_preset": finetune.default_preset(gpu, image_text=True),
           "endpoint": next((e["name"] for e in live_ if e.get("engine") != "rag"), None),
           "rag_endpoint": next((e["name"] for e in live_ if e.get("engine") == "rag"), None)}
    ctx["first_image"] = _first_image(ctx["image_dataset"], home)
    ctx.update({k: v for k, v in (params or {}).items() if v})
    return ctx


def _first_image(dataset: str | None, home: Path) -> str | None:
    """The first image of an image-text dataset, as its rows name it (relative to the dataset's folder)."""
    entry = open_store(home).get("dataset", dataset) if dataset else None
    if entry is None:
        return None
    try:
        rows = image_text.load_rows(entry.path, limit=1, check=False)
    except (UserError, OSError):
        return None
    files = rows[0][1]
    if not files:
        return None
    return next((str(files[0].relative_to(r)) for r in image_text.root_of(Path(entry.path))
                 if files[0].is_relative_to(r)), None)


def fill(value, ctx: dict, step: int):
    """``value`` with every ``{name}`` in its strings filled from ``ctx``; LabError naming what is missing."""
    if isinstance(value, dict):
        return {k: fill(v, ctx, step) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ctx, step) for v in value]
    if not isinstance(value, str):
        return value
    for _, name, _, _ in string.Formatter().parse(value):
        if name and not ctx.get(name):
            raise LabError("err.lab.step_needs", n=step, what=name)
    return value.format(**ctx)


def step_spec(lab: Lab, index: int, by, params: dict | None = None, *, home: Path) -> dict:
    """Step ``index``'s spec filled in for ``by`` (LabError when something it names is missing)."""
    user = users.acting(by, home=home)
    return fill(lab.steps[index].spec, context(user.name, params, home=home),
                index + 1)


def start_step(lab_id: str, index: int, by, params: dict | None = None, *, home: Path):
    """Do step ``index`` for ``by`` with its prefilled spec: queue its job (the job id) or run its action."""
    lab = get(lab_id, home)
    step = lab.steps[index]
    spec = step_spec(lab, index, by, params, home=home)
    if step.action == "self_cognition_dataset":
        return self_cognition_dataset(spec.get("name", ""), by, home)
    if not step.kind:
        raise LabError("err.lab.by_hand", n=index + 1)
    user = users.acting(by, home=home)
    return queue.submit(step.kind, spec, owner=user.name, label=f"lab {lab.id}", home=home)


def step_done(step: Step, student: str, home: Path) -> bool:
    """A step is done when its action's artifact exists, or a job of its kind succeeded (a server: runs)."""
    if step.action == "self_cognition_dataset":
        return any("self_cognition" in e.meta for e in mine("dataset", student, home))
    if step.done_when == "image_dataset":
        return _image_dataset(student, home) is not None
    if not step.kind:
        return False
    states = [JobState.SUCCEEDED, JobState.RUNNING] if step.kind in SERVERS else [JobState.SUCCEEDED]
    return bool(open_store(home).jobs(kind=step.kind, owner=student, states=states, limit=1))


# -- checks ------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    student: str
    home: Path
    seen: dict
    artifacts: list

    @property
    def store(self) -> Store:
        return open_store(self.home)

    def mine(self, type: str) -> list[Entry]:
        return mine(type, self.student, self.home)

    def jobs(self, kind: str, states=(JobState.SUCCEEDED,)) -> list:
        return self.store.jobs(kind=kind, owner=self.student, states=list(states), limit=200)

    def artifact(self, type: str, name: str, id, folder: str | Path | None, patterns: tuple[str, ...] = ()) -> None:
        """Record an artifact with the sha256 of its key files (those matching ``patterns`` in ``folder``)."""
        hashes = {}
        if folder and Path(folder).is_dir():
            for f in sorted({f for p in patterns for f in Path(folder).glob(p) if f.is_file()}):
                size = f.stat().st_size
                hashes[f.name] = sha256(f) if size <= HASH_MAX_BYTES else f"size:{size}"
        self.artifacts.append({"type": type, "name": name, "id": id, "files": hashes})

    def live(self) -> list[dict]:
        """Live endpoints that are the student's."""
        entries = {e.name: e for e in self.store.items("endpoint")}
        return [e for e in chat.endpoints(self.home, by=self.student)
                if e["name"] in entries and entries[e["name"]].owner == self.student]

    def ask(self, ep: dict, prompt: str, max_tokens: int = 32) -> str:
        try:
            return "".join(chat.stream_chat(ep, [{"role": "user", "content": prompt}], temperature=0,
                                            max_tokens=max_tokens, by=self.student, home=self.home)).strip()
        except chat.ChatError as e:
            raise Missing("err.lab.server_failed", server=ep["name"], error=e) from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_download(c: Ctx, repo: str = "") -> None:
    """A model of the student's in the registry with its config and its weight index (or weights)."""
    found = [e for e in c.mine("model") if not repo or str(e.meta.get("id", "")).lower() == repo.lower()]
    if not found:
        raise Missing("err.lab.no_model", repo=repo or "-")
    e = found[0]
    folder = Path(e.path)
    if not (folder / "config.json").is_file():
        raise Missing("err.lab.no_config", model=e.name)
    index = sorted(folder.glob("*.index.json"))
    weights = [f for f in folder.iterdir() if f.suffix in models.WEIGHT_SUFFIXES]
    if not index and not weights:
        raise Missing("err.lab.no_index", model=e.name)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    c.artifact("model", e.name, e.id, folder, ("config.json", "*.index.json") + (() if index else ("*.safetensors",)))
    c.seen.update(model=e.name, source=e.meta.get("source"), repo=e.meta.get("id"),
                  architectures=config.get("architectures"), index=[f.name for f in index],
                  weights=len(weights))


def _trained_on(e: Entry, dataset: str) -> bool:
    return dataset in (e.meta.get("datasets") or (e.meta.get("lineage") or {}).get("datasets") or [])


def check_self_cognition(c: Ctx, prompts: tuple[str, ...] = ("Who are you?", "你是谁？"), every: bool = False) -> None:
    """The student's adapter (or merged model), trained on their self-cognition dataset and served, answers a
    prompt (``every``: each prompt) with the chosen name; the base model beside it says it to none."""
    sets = [e for e in c.mine("dataset") if "self_cognition" in e.meta]
    if not sets:
        raise Missing("err.lab.no_selfcog_dataset")
    ds, name = sets[0], sets[0].meta["self_cognition"]["name"]
    tuned = [e for t in ("adapter", "model") for e in c.mine(t) if _trained_on(e, ds.name)]
    if not tuned:
        raise Missing("err.lab.no_tuned", dataset=ds.name)
    names = {e.name for e in tuned}
    live = c.live()
    ep = next((e for e in live if not e.get("base_of") and
               (e.get("source", "").partition("+")[2] in names or e.get("source") in names)), None)
    if ep is None:
        raise Missing("err.lab.not_served", model=tuned[0].name)
    base = chat.base_endpoint(ep, c.home) or next(
        (e for e in chat.endpoints(c.home, by=c.student) if e.get("source") == tuned[0].meta.get("base_model")), None)
    if base is None:
        raise Missing("err.lab.no_base", model=tuned[0].meta.get("base_model", "?"))
    answers, base_answers = {}, {}
    for p in prompts:
        answers[p] = c.ask(ep, p)
        base_answers[p] = c.ask(base, p)
    c.seen.update(name=name, server=ep["name"], base_server=base["name"], answers=answers, base_answers=base_answers)
    wrong = [p for p, a in answers.items() if name.lower() not in a.lower()]
    if wrong and (every or len(wrong) == len(answers)):
        raise Missing("err.lab.wrong_name", name=name, prompt=wrong[0], answer=answers[wrong[0]][:200])
    said = [p for p, a in base_answers.items() if name.lower() in a.lower()]
    if said:
        raise Missing("err.lab.base_knows", name=name, prompt=said[0])
    served = next(e for e in tuned if e.name in (ep["source"], ep["source"].partition("+")[2]))
    c.artifact(served.type.value, served.name, served.id, served.path,
               ("adapter_config.json", "adapter_model.safetensors", "config.json", "*.index.json"))
    c.artifact("dataset", ds.name, ds.id, Path(ds.path).parent, (Path(ds.path).name,))
    c.artifact("endpoint", ep["name"], ep["job_id"], None)


def check_evaluate(c: Ctx, dataset: str, min_score: float | None = None, vs_base: bool = False,
                   min_gain: float | None = None) -> None:
    """An evaluation of the student's with a score on ``dataset`` (at least ``min_score`` when given). ``vs_base``:
    one run scored an adapter of theirs and its base model side by side (``min_gain``: the adapter's score at
    least that many points above the base's); the evidence keeps both scores and the change."""
    runs = [e for e in c.mine("eval") if not e.meta.get("rag")             # OpenCompass's, not a rag_eval's
            and any(dataset == d or d.startswith(dataset) for d in e.meta.get("datasets", []))]
    if not runs:
        raise Missing("err.lab.no_eval", dataset=dataset)
    if vs_base:
        return _check_vs_base(c, runs, dataset, min_gain)
    for run in runs:
        rows = [r for r in run.meta.get("table", []) if str(r.get("dataset", "")).startswith(dataset.removesuffix("_gen"))
                and deploy.is_number(r.get("score"))]
        if rows:
            break
    else:
        raise Missing("err.lab.no_score", dataset=dataset, run=runs[0].name)
    best = max(rows, key=lambda r: float(r["score"]))
    if min_score is not None and float(best["score"]) < min_score:
        raise Missing("err.lab.low_score", dataset=dataset, score=best["score"], min=min_score)
    c.artifact("eval", run.name, run.id, run.path, ("result.json",))
    c.seen.update(eval=run.name, dataset=best["dataset"], model=best.get("model"), metric=best.get("metric"),
                  score=float(best["score"]), scores={r.get("model"): r["score"] for r in rows})


def check_rag(c: Ctx) -> None:
    """An evaluation of the student's with and without retrieval (a rag_eval job) in which a question was answered
    wrongly by the model alone and rightly through the knowledge base, with the answer in a retrieved passage."""
    runs = [e for e in c.mine("eval") if e.meta.get("rag") and e.job_id
            and getattr(c.store.job(e.job_id), "kind", "") == "rag_eval"]
    if not runs:
        raise Missing("err.lab.no_rag_eval")
    guessed = None                              # a run where retrieval fixed a question but held no answer
    for run in runs:
        items = (logs.result(run.job_id, c.home) or {}).get("items") or []
        fixed = [it for it in items if it.get("rag_correct") and not it.get("alone_correct")]
        proved = next((it for it in fixed if it.get("hit")), None)
        if proved is None:
            guessed = guessed or (fixed and (run, fixed[0]))
            continue
        ev = run.meta["rag"]
        answers = rag_eval.golds(proved["answer"])
        passage = next(p for p in proved["passages"] if rag_eval.contains(p.get("text", ""), answers))
        c.artifact("eval", run.name, run.id, run.path, ("result.json",))
        kb = c.store.get("kb", ev.get("kb") or "")
        if kb is not None:
            c.artifact("kb", kb.name, kb.id, kb.path, ("retriever.json",))
        c.seen.update(eval=run.name, job=run.job_id, kb=ev.get("kb"), endpoint=ev.get("endpoint"),
                      model=ev.get("model"), question=proved["question"], answer=proved["answer"],
                      alone=proved["alone"], with_retrieval=proved["rag"], passage=rag.place(passage),
                      passage_text=passage.get("text", "")[:300],
                      summary={k: ev.get(k) for k in ("questions", "alone_accuracy", "rag_accuracy", "hit_rate",
                                                       "fixed", "broke")})
        return
    if guessed:
        raise Missing("err.lab.rag_no_hit", run=guessed[0].name, question=guessed[1]["question"])
    ev = runs[0].meta["rag"]
    raise Missing("err.lab.rag_not_fixed", run=runs[0].name, n=ev.get("questions"), rag=ev.get("rag_accuracy"),
                  alone=ev.get("alone_accuracy"))


def _check_vs_base(c: Ctx, runs: list[Entry], dataset: str, min_gain: float | None) -> None:
    """The newest run holding, on ``dataset``, the score of an adapter of the student's and of its base model."""
    for run in runs:
        scores = {r.get("model"): float(r["score"]) for r in run.meta.get("table", [])
                  if str(r.get("dataset", "")).startswith(dataset.removesuffix("_gen")) and deploy.is_number(r.get("score"))}
        for name in run.meta.get("peft") or {}:
            adapter = c.store.get("adapter", name)
            base = (adapter.meta or {}).get("base_model") if adapter is not None and adapter.owner == c.student else None
            if name in scores and base in scores:
                break
        else:
            continue
        gain = round(scores[name] - scores[base], 4)
        if min_gain is not None and gain < min_gain:
            raise Missing("err.lab.low_gain", dataset=dataset, adapter=name, tuned=scores[name], base=base,
                          base_score=scores[base], min=min_gain)
        c.artifact("eval", run.name, run.id, run.path, ("result.json",))
        c.artifact("adapter", adapter.name, adapter.id, adapter.path, ("adapter_config.json", "adapter_model.safetensors"))
        metric = next((r.get("metric") for r in run.meta.get("table", []) if r.get("model") == name), None)
        c.seen.update(eval=run.name, dataset=dataset, metric=metric, model=name, score=scores[name],
                      base=base, base_score=scores[base], gain=gain, scores={base: scores[base], name: scores[name]})
        return
    raise Missing("err.lab.no_base_vs_tuned", dataset=dataset)


def check_agent(c: Ctx) -> None:
    """An agent run of the student's that used the Python interpreter and gave an answer."""
    runs = c.jobs("agent")
    if not runs:
        raise Missing("err.lab.no_agent")
    for job in runs:
        steps = events.events(job.id, home=c.home).steps
        tools = [s for s in steps if s.get("type") == "tool"]
        answer = (logs.result(job.id, c.home) or {}).get("answer")
        if tools and answer:
            c.artifact("job", f"agent job {job.id}", job.id, job_dir(job.id, c.home), ("result.json",))
            c.seen.update(job=job.id, prompt=job.spec.get("prompt"), code=tools[0].get("code"),
                          output=str(tools[0].get("output", ""))[:500], answer=answer)
            return
    raise Missing("err.lab.agent_no_tool", job=runs[0].id)


def check_quantize_deploy(c: Ctx, method: str = "awq_w4a16", kv_quant: str = "int8") -> None:
    """A quantized model of the student's, served by them: its API answers and its memory is recorded. On a
    machine without a GPU, NF4 stands in for ``method`` and the KV-cache part is named, not checked."""
    gpu = bool(placement.gpus())
    quantized = [e for e in c.mine("model") if e.meta.get("quantized_from")]
    if not quantized:
        raise Missing("err.lab.no_quantized")
    if gpu and not any(e.meta.get("quant_method") == method for e in quantized):
        raise Missing("err.lab.quant_method", method=method, have=quantized[0].meta.get("quant_method"))
    names = {e.name for e in quantized}
    ep = next((e for e in c.live() if e.get("source") in names), None)
    if ep is None:
        raise Missing("err.lab.quant_not_served", model=quantized[0].name)
    if gpu and kv_quant != "none" and ep.get("kv_quant") != kv_quant:
        raise Missing("err.lab.kv_quant", server=ep["name"], kv_quant=kv_quant)
    answer = c.ask(ep, "Say hello in one short sentence.", 24)
    if not answer:
        raise Missing("err.lab.empty_answer", server=ep["name"])
    job = c.store.job(ep["job_id"])
    memory = deploy.server_memory_gb(job.pid if job else None)
    if memory is None:
        raise Missing("err.lab.no_memory", server=ep["name"])
    e = next(e for e in quantized if e.name == ep["source"])
    c.artifact("model", e.name, e.id, e.path, ("config.json", "*.index.json", "*.safetensors"))
    c.artifact("endpoint", ep["name"], ep["job_id"], None)
    c.seen.update(model=e.name, method=e.meta.get("quant_method"), quantized_from=e.meta.get("quantized_from"),
                  server=ep["name"], engine=ep.get("engine"), device=ep.get("device"), kv_quant=ep.get("kv_quant"),
                  answer=answer, memory_gb=memory, measured=e.meta.get("deploy") or None,
                  **({} if gpu else {"gpu_only": both_languages("lab.gpu_only", method=method, kv_quant=kv_quant)}))


def check_finetune(c: Ctx, min_drop: float = 0.0) -> None:
    """A finished fine-tune of the student's whose loss fell (by at least ``min_drop`` of its first value)."""
    runs = c.jobs("finetune")
    if not runs:
        raise Missing("err.lab.no_finetune")
    for job in runs:
        r = logs.result(job.id, c.home) or {}
        first, final = r.get("first_loss"), r.get("final_loss")
        if first is not None and final is not None and final < first * (1 - min_drop):
            _run_artifacts(c, job, r)
            c.seen.update(job=job.id, first_loss=round(first, 4), final_loss=round(final, 4), steps=r.get("steps"),
                          adapter=r.get("adapter") or r.get("model"), answers_after=r.get("answers_after"))
            return
    raise Missing("err.lab.loss_flat", job=runs[0].id)


def check_grpo(c: Ctx, min_rise: float = 0.05) -> None:
    """A finished GRPO run of the student's whose mean reward rose (last quarter of the steps against the first)
    by at least ``min_rise``; the evidence keeps the rewards, the rise and the best answer of the last step."""
    runs = [j for j in c.jobs("finetune") if j.spec.get("objective") == "grpo"]
    if not runs:
        raise Missing("err.lab.no_grpo")
    for job in runs:
        r = logs.result(job.id, c.home) or {}
        first, final = r.get("first_reward"), r.get("final_reward")
        if first is None or final is None or final - first < min_rise:
            continue
        shown = [e for e in logs.read_events(job.id, home=c.home)[0] if e.get("type") == "completions" and e.get("rows")]
        best = max(shown[-1]["rows"], key=lambda row: row.get("reward", 0.0)) if shown else {}
        _run_artifacts(c, job, r)
        c.seen.update(job=job.id, rewards=job.spec.get("rewards"), first_reward=first, final_reward=final,
                      rise=round(final - first, 4), steps=r.get("steps"), prompt=best.get("prompt"),
                      completion=best.get("completion"), reward=best.get("reward"))
        return
    r = logs.result(runs[0].id, c.home) or {}
    raise Missing("err.lab.reward_flat", job=runs[0].id, first=r.get("first_reward"), final=r.get("final_reward"),
                  min=min_rise)


def check_image_text(c: Ctx, min_drop: float = 0.0) -> None:
    """A finished image-text fine-tune of the student's whose loss fell and whose answers on its sample images
    changed (the base model's before the run, the tuned one's after); the evidence keeps each pair."""
    runs = [j for j in c.jobs("finetune") if j.spec.get("modality") == "image_text"]
    if not runs:
        raise Missing("err.lab.no_image_text")
    why = None
    for job in runs:
        r = logs.result(job.id, c.home) or {}
        first, final = r.get("first_loss"), r.get("final_loss")
        images = job.spec.get("sample_images") or []
        prompts = job.spec.get("sample_prompts") or []
        pairs = [{"image": img, "question": prompts[k] if k < len(prompts) else "", "before": b, "after": a}
                 for k, (img, b, a) in enumerate(zip(images, r.get("answers_before") or [], r.get("answers_after") or []))]
        if first is None or final is None or final >= first * (1 - min_drop):
            why = why or Missing("err.lab.loss_flat", job=job.id)
        elif not images:
            why = why or Missing("err.lab.it_no_samples", job=job.id)
        elif not any(p["before"] != p["after"] for p in pairs):
            why = why or Missing("err.lab.it_unchanged", job=job.id)
        else:
            _run_artifacts(c, job, r)
            c.seen.update(job=job.id, base_model=job.spec.get("base_model"), datasets=job.spec.get("datasets"),
                          first_loss=round(first, 4), final_loss=round(final, 4), steps=r.get("steps"), samples=pairs)
            return
    raise why


def _run_artifacts(c: Ctx, job, r: dict) -> None:
    """A fine-tune's artifacts: the adapter (or model) its result names, when it is the student's, and the job."""
    name = r.get("adapter") or r.get("model")
    entry = c.store.get("adapter" if r.get("adapter") else "model", name) if name else None
    if entry is not None and entry.owner == c.student:
        c.artifact(entry.type.value, entry.name, entry.id, entry.path,
                   ("adapter_config.json", "adapter_model.safetensors", "config.json"))
    c.artifact("job", f"finetune job {job.id}", job.id, job_dir(job.id, c.home), ("result.json",))


def both_languages(key: str, **fields) -> dict:
    """A keyed sentence kept in evidence in both languages."""
    return {lang: i18n.t(key, lang, **fields) for lang in i18n.LANGS}


CHECKS = {"download": check_download, "self_cognition": check_self_cognition, "evaluate": check_evaluate,
          "agent": check_agent, "quantize_deploy": check_quantize_deploy, "finetune": check_finetune,
          "rag": check_rag, "grpo": check_grpo, "image_text": check_image_text}


# -- running a lab's checks ------------------------------------------------------------------------------
def problem(e: UserError) -> dict:
    """A refusal as data (key + fields, nested ones too) to keep in result.json and render in any language."""
    plain = lambda v: problem(v) if isinstance(v, UserError) else v     # noqa: E731
    return {"key": e.key, "fields": {k: plain(v) for k, v in e.fields.items()}}


def as_error(p: dict) -> Missing:
    return Missing(p["key"], **{k: as_error(v) if isinstance(v, dict) and "key" in v else v
                                for k, v in p["fields"].items()})


def run(lab_id: str, student: str, home: Path, job_id: int | None = None, log=print) -> dict:
    """Run every check of ``lab_id`` on ``student``'s artifacts: ``{"passed", "checks": [...], "evidence"?}``."""
    lab = get(lab_id, home)
    out = []
    for ref in lab.checks:
        c = Ctx(student, home, {}, [])
        try:
            CHECKS[ref.check](c, **ref.args)
            out.append({"check": ref.check, "passed": True, "seen": c.seen, "artifacts": c.artifacts})
            log(f"{ref.check}: passed")
        except Missing as e:
            out.append({"check": ref.check, "passed": False, "problem": problem(e), "seen": c.seen})
            log(f"{ref.check}: not yet: {e}")
    passed = all(x["passed"] for x in out)
    result = {"lab": lab.id, "student": student, "passed": passed, "checks": out}
    if passed:
        result["evidence"] = sign({"lab": lab.id, "title": lab.title.en, "camp": lab.camp.en, "student": student,
                                   "checked_at": time.time(), "job": job_id, "checks": out}, home)
    return result


# -- evidence ------------------------------------------------------------------------------------------------
def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _mac(record: dict, home: Path | None) -> str:
    key = hmac.new(users._secret(home), b"workbench-lab-evidence", hashlib.sha256).digest()   # the workspace key
    return hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()


def sign(record: dict, home: Path) -> dict:
    return {"evidence": record, "signature": _mac(record, home), "alg": "HMAC-SHA256"}


def verify(data: bytes, home: Path) -> dict:
    """The evidence record when ``data`` (the JSON, or the HTML page that carries it) is genuine and unchanged;
    LabError saying why not. A page must also be exactly the page its record renders: its visible text
    cannot be edited apart from the signed record."""
    inner = evidence_page.embedded(data)
    if inner is not None:
        record = verify(inner, home)
        if data not in {evidence_page.page(json.loads(inner), lang).encode() for lang in i18n.LANGS}:
            raise LabError("err.lab.evidence_page_changed")
        return record
    try:
        doc = json.loads(data)
        record, signature = doc["evidence"], doc["signature"]
    except (ValueError, TypeError, KeyError):
        raise LabError("err.lab.evidence_unreadable") from None
    if not isinstance(signature, str) or not hmac.compare_digest(_mac(record, home), signature):
        raise LabError("err.lab.evidence_forged")
    return record


def evidence_json(result: dict) -> str:
    return json.dumps(result["evidence"], ensure_ascii=False, indent=2)


def evidence_html(result: dict, lang: str) -> str:
    """The same signed evidence as a printable page (backend/pipeline/evidence_page.py); ``labs verify`` accepts it too."""
    return evidence_page.page(result["evidence"], lang)


# -- submitting and reading checks ---------------------------------------------------------------------------
def submit_check(lab_id: str, by, student: str | None = None, *, home: Path) -> int:
    """Queue a check of ``lab_id`` for ``student`` (default: ``by``); only an instructor checks somebody else.
    The job's owner is the student: the job reads only their artifacts."""
    get(lab_id, home)
    user = users.acting(by, home=home)
    student = student or user.name
    if user.name != student and not user.instructor:
        users.refuse(by, "check", f"lab {lab_id} of {student}", Refused("err.lab.not_yours", student=student), home=home)
    return queue.submit(KIND, {"lab": lab_id}, owner=student, label=f"check {lab_id}", home=home)


def students(home: Path) -> list[str]:
    """The class: students with accounts, else everybody but the instructors who has submitted a job."""
    store = open_store(home)
    names = [u["name"] for u in store.users() if u["role"] == "student" and not u["disabled"]]
    return names or sorted({j.owner for j in store.jobs(limit=100_000) if not users.is_instructor(j.owner, home=home)})


def recheck_all(lab_id: str, by, home: Path) -> list[int]:
    users.require_instructor(by, "recheck", f"lab {lab_id}", Refused("err.lab.instructor_only"), home=home)
    return [submit_check(lab_id, by, s, home=home) for s in students(home)]


def attempts(student: str | None = None, *, home: Path) -> list[dict]:
    """Check jobs (newest first) with their outcome: job, lab, student, state, when, passed, result."""
    out = []
    for j in open_store(home).jobs(kind=KIND, owner=student, limit=10_000):
        r = logs.result(j.id, home) if j.finished else None
        out.append({"job": j.id, "lab": j.spec.get("lab"), "student": j.owner, "state": j.state,
                    "when": j.finished_at or j.created_at, "passed": bool(r and r.get("passed")),
                    "result": r if r and r.get("ok") else None, "error": j.error_message})
    return out


def status(by, home: Path) -> list[dict]:
    """``by``'s labs: each lab, its state (not_started / in_progress / passed), its steps done, the next step,
    its newest check (and the passed one)."""
    user = users.acting(by, home=home)
    student = user.name
    tries = attempts(student, home=home)
    out = []
    for lab in visible(by, home):
        mine_ = [a for a in tries if a["lab"] == lab.id]
        done = [step_done(s, student, home) for s in lab.steps]
        passed = next((a for a in mine_ if a["passed"]), None)
        state = "passed" if passed else "in_progress" if mine_ or any(done) else "not_started"
        nxt = next((i for i, d in enumerate(done) if not d), None)
        out.append({"lab": lab, "state": state, "done": done, "next": nxt, "latest": mine_[0] if mine_ else None,
                    "passed": passed, "checking": any(not JobState(a["state"]).finished for a in mine_),
                    "busy": any(_busy(s.kind, student, home) for s in lab.steps if s.kind)})
    return out


def _busy(kind: str, student: str, home: Path | None) -> bool:
    """A job of ``kind`` of the student's is on its way (a server: until it runs)."""
    states = [JobState.QUEUED, JobState.STARTING] + ([] if kind in SERVERS else [JobState.RUNNING])
    return bool(open_store(home).jobs(kind=kind, owner=student, states=states, limit=1))


def grid(by, home: Path) -> tuple[list[Lab], list[dict]]:
    """The instructor's student × lab grid: per student, per lab {"state": passed|tried|not_started, "when", "job"}."""
    users.require_instructor(by, "lab grid", "class", Refused("err.lab.instructor_only"), home=home)
    labs_ = [lab for lab in load(home)[0].values() if lab.available]
    tries = attempts(home=home)
    rows = []
    for s in students(home):
        row = {"student": s}
        for lab in labs_:
            mine_ = [a for a in tries if a["student"] == s and a["lab"] == lab.id]
            passed = next((a for a in mine_ if a["passed"]), None)
            pick = passed or (mine_[0] if mine_ else None)
            row[lab.id] = {"state": "passed" if passed else "tried" if mine_ else "not_started",
                           "when": pick["when"] if pick else None, "job": pick["job"] if pick else None}
        rows.append(row)
    return labs_, rows


def grid_csv(by, home: Path) -> str:
    labs_, rows = grid(by, home)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["student", *[x for lab in labs_ for x in (lab.id, f"{lab.id}_at")]])
    for r in rows:
        w.writerow([r["student"], *[x for lab in labs_ for x in (
            r[lab.id]["state"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r[lab.id]["when"]))
            if r[lab.id]["when"] else "")]])
    return buf.getvalue()


def evidence_of(job_id: int, by, home: Path) -> dict | None:
    """The signed evidence a passed check wrote (its student or an instructor), or None."""
    job = queue.get(job_id, home, by=by)
    if job.kind != KIND:
        raise KeyError(f"job {job_id} is not a lab check")
    r = logs.result(job_id, home) or {}
    return r.get("evidence")
