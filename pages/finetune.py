"""Fine-tune: a form (model, data, method, preset, advanced fields) with the memory estimate, the
spec as YAML + CLI, then the run's live view with Resume / Merge / Chat, and runs compared."""
import pandas as pd
import streamlit as st

from backend.pipeline import rewards as rewards_
from backend.runtime import logs, queue
from backend.workspace import datasets, prompts
from backend.core.job import Job
from backend.core.states import JobState
from backend.pipeline import finetune as ft
from backend.workspace import models as models_
from backend.kinds import finetune as ft_spec
from pages import keys, ui

S_JOB = keys.FT_JOB

st.title(ui.t("nav.finetune"))
models = models_.names(home=ui.home(), by=ui.user())
all_sets = datasets.list_datasets(by=ui.user(), home=ui.home())
if not models:
    st.info(ui.t("ft.no_models"))
    st.page_link("pages/models.py", label=ui.t("nav.models"))
    st.stop()

# -- the form ---------------------------------------------------------------------------------------
EXAMPLE_REWARD = ("def reward(completions, **columns):\n"
                  "    # one number per answer; columns: the dataset's other columns (answer, ...), one value per answer\n"
                  "    return [1.0 if 'InternLM' in c else 0.0 for c in completions]\n")


def grpo_form(preset: str, values: dict) -> dict:
    """The rewards (kinds, weights, settings) and the GRPO settings; only what differs from the preset."""
    out = {}
    with st.expander(ui.t("ft.grpo.settings"), expanded=True):
        cols = st.columns(len(ft_spec.GRPO_FIELDS))
        for col, field in zip(cols, ft_spec.GRPO_FIELDS):
            v, key = values[field], f"ft_{field}_{preset}"
            got = col.number_input(field, value=v, step=1 if isinstance(v, int) else None,
                                   format=None if isinstance(v, int) else "%g", key=key)
            if got != v:
                out[field] = got
    with st.container(key="ft-rewards", border=True):
        st.caption(ui.t("ft.grpo.rewards"))
        given = {r["kind"]: r for r in values["rewards"]}
        kinds = st.multiselect(ui.t("ft.grpo.kinds"), list(rewards_.KINDS), default=list(given),
                               format_func=lambda k: ui.t("ft.grpo.kind." + k), key=f"ft_rewards_{preset}")
        base = rewards_.Reward
        chosen = []
        for kind in kinds:
            r, key = {"kind": kind, **given.get(kind, {})}, f"ft_reward_{kind}_{preset}"
            c1, c2 = st.columns([1, 4])
            r["weight"] = c1.number_input(f"{kind}: {ui.t('ft.grpo.weight')}", value=float(r.get("weight", 1.0)),
                                          format="%g", key=key + "_w")
            if kind == "length":
                r["target"] = int(c2.number_input("target", value=int(r.get("target", base.model_fields["target"].default)),
                                                  step=1, min_value=1, key=key))
            elif kind == "format":
                r["pattern"] = c2.text_input("pattern", r.get("pattern", base.model_fields["pattern"].default), key=key)
            elif kind == "contains":
                r["words"] = [w.strip() for w in c2.text_input("words", ", ".join(r.get("words", [])), key=key).split(",")
                              if w.strip()]
            elif kind == "answer":
                a, b = c2.columns(2)
                r["column"] = a.text_input("column", r.get("column", "answer"), key=key)
                options = ["math", "numeric", "exact"]
                r["match"] = b.selectbox("match", options, index=options.index(r.get("match", "math")), key=key + "_m")
            elif kind == "repetition":
                r["ngram"] = int(c2.number_input("ngram", value=int(r.get("ngram", 3)), step=1, min_value=1, key=key))
            else:
                r["code"] = c2.text_area("reward(completions, **columns)", r.get("code") or EXAMPLE_REWARD, key=key,
                                         height=120)
            chosen.append(r)
        out["rewards"] = chosen
    return out


with st.container(key="ft-form", border=True):
    c1, c2 = st.columns(2)
    base = c1.selectbox(ui.t("ft.base_model"), models, key=keys.FT_MODEL)
    modality = c1.radio(ui.t("ft.modality"), ["text", "image_text"], horizontal=True, key="ft_modality",
                        format_func=lambda m: ui.t("ft.modality." + m), help=ui.t("ft.modality.help"))
    images = modality == "image_text"
    objective = "sft" if images else c1.radio(ui.t("ft.objective"), ["sft", "pretrain", "dpo", "orpo", "kto", "grpo"],
                                               horizontal=True, key="ft_objective",
                                               format_func=lambda o: ui.t("ft.objective." + o),
                                               help=ui.t("ft.objective.help"))
    usable = prompts.FORMATS if objective == "grpo" else \
        datasets.TRAIN_FORMATS + {"pretrain": ("text",), "sft": ()}.get(objective, ("preference",))
    train_sets = [d.name for d in all_sets if (d.meta or {}).get("format") in usable
                  and bool((d.meta or {}).get("images")) == images]
    picked = c2.multiselect(ui.t("ft.datasets"), train_sets,
                            key="ft_datasets_image_text" if images else f"ft_datasets_{objective}",
                            default=[d for d in train_sets if "self_cognition" in d][:1] if objective == "sft" else [])
    c1, c2, c3 = st.columns(3)
    method = c1.radio(ui.t("ft.method"), ["lora", "qlora", "full"], horizontal=True, key="ft_method",
                      help=ui.t("ft.method.help"))
    offered = ft_spec.presets_for(objective, images)
    preset = c2.selectbox(ui.t("ft.preset"), offered,
                          key="ft_preset_image_text" if images else "ft_preset_grpo" if objective == "grpo" else "ft_preset",
                          index=offered.index(ft.default_preset(objective=objective, image_text=images)),  # CPU demos without a GPU
                          format_func=lambda p: ui.t("ft.preset." + p))
    name = c3.text_input(ui.t("ft.name"), key="ft_name", placeholder=ui.t("ft.name.auto"))
    values = ft_spec.preset_values(preset)
    chosen = {}
    with st.expander(ui.t("ft.advanced")):
        cols = st.columns(4)
        for i, field in enumerate(f for f in ft_spec.ADVANCED if images or f != "train_projector"):
            default, col, key = values[field], cols[i % 4], f"ft_{field}_{preset}"   # a preset change resets them
            if isinstance(default, bool):
                chosen[field] = col.checkbox(field, default, key=key)
            elif isinstance(default, str):
                options = ft_spec.choices(field)
                chosen[field] = col.selectbox(field, options, index=options.index(default), key=key)
            elif isinstance(default, list):
                chosen[field] = [x.strip() for x in col.text_input(field, ",".join(default), key=key).split(",") if x.strip()]
            elif isinstance(default, float):
                chosen[field] = col.number_input(field, value=default, format="%g", key=key)
            else:
                chosen[field] = int(col.number_input(field, value=int(default), step=1, key=key))
        asked = st.text_area(ui.t("ft.sample_prompts"), "" if images else "Who are you?\n你是谁？",
                             key="ft_prompts_image_text" if images else "ft_prompts", height=68)
        shots = st.text_input(ui.t("ft.sample_images"), key="ft_sample_images") if images else ""
        trackers = st.multiselect(ui.t("ft.trackers"), ["wandb", "swanlab"], key="ft_trackers",
                                  format_func={"wandb": "Weights & Biases", "swanlab": "SwanLab"}.get,
                                  help=ui.t("ft.trackers.help"))
    grpo = {}
    if objective == "grpo":
        grpo = grpo_form(preset, values)
    spec = {"base_model": base, "datasets": picked, "method": method, "preset": preset,
            **({"modality": "image_text"} if images else {}),
            **({"sample_images": [p.strip() for p in shots.split(",") if p.strip()]} if images else {}),
            **({"objective": objective} if objective != "sft" else {}),
            **({"name": name.strip()} if name.strip() else {}),
            **({"trackers": trackers} if trackers else {}),
            **{k: v for k, v in chosen.items() if v != values[k]},
            **grpo, "sample_prompts": [p.strip() for p in asked.splitlines() if p.strip()]}

    plan = None
    if picked:
        try:
            plan = ft.check(queue.validate("finetune", spec)[1], home=ui.home())
        except queue.SubmitError as e:
            ui.error(e)
        except ValueError as e:
            ui.error(e)
    if plan:
        est = plan["estimate"]
        with st.container(key="ft-estimate"):
            cols = st.columns(6)
            where = ui.t("ft.est.gpu") if plan["on_gpu"] else ui.t("ft.est.cpu")
            cols[0].metric(ui.t("ft.est.total", where=where), f"{est['total_gb']:.2f} GB")
            cols[1].metric(ui.t("ft.est.weights"), f"{est['weights_gb']:.2f} GB")
            cols[2].metric(ui.t("ft.est.trainable"), f"{est['trainable_gb']:.2f} GB",
                           help=ui.t("ft.est.params", n=f"{est['trainable_params']:,}", total=f"{est['params']:,}"))
            cols[3].metric(ui.t("ft.est.activations"), f"{est['activations_gb']:.2f} GB")
            cols[4].metric(ui.t("ft.est.overhead"), f"{est['overhead_gb']:.1f} GB")
            took = plan["duration"]
            cols[5].metric(ui.t("ft.est.duration"), ui.duration(took["seconds"]), help=ui.t(
                "ft.est.duration.help", tokens=f"{took['tokens']:,}", rate=f"{took['tokens_per_s']:,.0f}",
                source=ui.t("ft.est.measured" if took["measured"] else "ft.est.calibrated")))
            if est.get("image_tokens_per_image"):          # image-text: what the activations were counted at
                st.caption(ui.t("ft.est.images", per_image=est["image_tokens_per_image"], row=est["row_tokens"]))
            if took["seconds"] > ft.LONG_RUN_S:
                st.warning(ui.t("ft.est.long", minutes=round(took["seconds"] / 60)))
            for w in plan["warnings"]:
                st.warning(w)
    c1, c2 = st.columns(2)
    c1.caption(ui.t("ft.yaml"))
    c1.code(ft.to_yaml(spec), language="yaml")
    c2.caption(ui.t("ft.cli"))
    c2.code(ft.cli_command("spec.yaml"), language="bash")
    if st.button(ui.t("ft.submit"), key="ft_submit", type="primary", disabled=not plan):
        job_id = ui.submit("finetune", spec)
        if job_id:
            st.session_state[S_JOB] = job_id
            st.query_params["job"] = str(job_id)


# -- the run ----------------------------------------------------------------------------------------
def run_actions(job_id: int) -> None:
    """Resume, Merge and Chat with it, beside the job's own Cancel/Retry/Clone (they appear when the run ends:
    the job view reruns the page then)."""
    job = queue.get(job_id, home=ui.home(), by=ui.user())
    result = logs.result(job.id, home=ui.home()) or {}
    c1, c2, c3 = st.columns(3)
    if ft.resumable(job, home=ui.home()) and c1.button(ui.t("ft.resume"), key=f"ft_resume_{job.id}", type="primary"):
        new = ui.submit("finetune", {**job.spec, "resume_from": job.id, "resume": False})
        if new:
            st.session_state[S_JOB] = new
            st.query_params["job"] = str(new)
            st.rerun(scope="app")
    adapter = result.get("adapter")
    pairs = list(zip(result.get("answers_before") or [], result.get("answers_after") or []))
    with st.container(key=f"ft_before_after_{job.id}", border=bool(pairs)):    # the sample answers, side by side
        for before, after in pairs:
            b, a = st.columns(2)
            b.caption(ui.t("ft.before"))
            b.markdown(before or "∅")
            a.caption(ui.t("ft.after"))
            a.markdown(after or "∅")
    if job.state == JobState.SUCCEEDED and adapter and job.spec.get("modality") == "image_text":
        if c2.button(ui.t("ft.compare_images"), key=f"ft_vlm_{job.id}"):    # base and tuned, side by side
            for spec_ in ({"model": job.spec["base_model"]}, {"adapter": adapter}):
                ui.submit("vlm", spec_)
            st.switch_page("pages/xcomposer.py")
    elif job.state == JobState.SUCCEEDED and adapter:
        if c2.button(ui.t("ft.merge"), key=f"ft_merge_{job.id}"):
            ui.submit("merge", {"adapter": adapter})
        if c3.button(ui.t("ft.chat"), key=f"ft_chat_{job.id}"):
            ui.chat_if_served(job.spec["base_model"], adapter)
            serve = ui.submit("serve", {"model": job.spec["base_model"], "adapter": adapter})
            if serve:
                st.session_state[keys.CHAT_STARTING] = serve       # the Chat page follows the starting server
                st.switch_page("pages/chat.py")


job_id = st.query_params.get("job") or st.session_state.get(S_JOB)
if job_id:
    try:
        job = queue.get(int(job_id), by=ui.user(), home=ui.home())
    except (KeyError, ValueError):      # no such job, not a number, or not this student's
        job = None
    if job and job.kind == "finetune":
        with st.container(key="ft-run", border=True):
            run_actions(job.id)
            ui.job_view(job.id)

# -- several runs on one chart ------------------------------------------------------------------------
def compare_runs() -> list[Job]:
    runs = queue.list_jobs(kind="finetune", limit=50, by=ui.user(), home=ui.home())
    if not runs:
        return runs
    with st.container(key="ft-compare", border=True):
        st.subheader(ui.t("ft.compare"))
        c1, c2 = st.columns([3, 1])
        ids = c1.multiselect(ui.t("ft.compare.runs"), [r.id for r in runs], default=[r.id for r in runs[:3]],
                             format_func=lambda i: f"job {i}", key="ft_compare_runs")
        metric = c2.selectbox(ui.t("ft.compare.metric"), ft.METRICS, key="ft_compare_metric")
        series = ft.compare(ids, metric, home=ui.home())
        if any(series.values()):
            ui.line_chart({run: sorted(points.items()) for run, points in series.items()}, height=260)
    return runs


ui.list_fragment(compare_runs, "ft_compare")

adapters = ft.adapters(by=ui.user(), home=ui.home())
if adapters:
    st.subheader(ui.t("ft.adapters"))
    st.dataframe(pd.DataFrame([{
        ui.t("ft.col.name"): a.name, ui.t("ft.base_model"): a.meta.get("base_model"),
        ui.t("ft.datasets"): ", ".join(a.meta.get("datasets", [])), ui.t("ft.method"): a.meta.get("method"),
        ui.t("ft.col.loss"): (a.meta.get("metrics") or {}).get("final_loss"), ui.t("ft.col.job"): a.job_id,
        ui.t("ft.col.when"): ui.when(a.created_at)} for a in adapters]), hide_index=True)
