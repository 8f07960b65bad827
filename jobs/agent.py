"""agent: a Lagent ReAct agent (lagent engine) that talks to an OpenAI-compatible endpoint and calls a
Python interpreter (backend/runtime/sandbox.py: bubblewrap, only the run's folder writable, no network, hard limits).

Each step goes to events.jsonl as it happens (``model``: what the model said; ``tool``: the code it ran
and the observation; ``answer``), the whole trace to artifacts/trace.json, and the files the code wrote
(plots, CSVs) stay in artifacts/files/.
"""
from __future__ import annotations

import json
import os

from backend.runtime.sandbox import Limits, run as run_code
from backend.kinds.agent import KEY_SECRET, Spec, target
from jobs.common import Job, JobError, run
from backend.core.errors import BAD_INPUT


def build(spec: Spec, job: Job, ep: dict, key: str, trace: list):
    from lagent.actions import ActionExecutor, BaseAction, tool_api
    from lagent.agents import ReAct
    from lagent.llms import GPTAPI
    from lagent.schema import ActionReturn, ActionStatusCode

    files = job.dir / "artifacts" / "files"
    limits = Limits(spec.cpu_s, spec.memory_mb, spec.wall_s, spec.output_kb)

    class OpenAIChat(GPTAPI):
        """GPTAPI speaks the OpenAI format only to model names starting with gpt/internlm: ours are any."""

        def generate_request_data(self, model_type, messages, gen_params, json_mode=False):
            data = {"model": model_type, "messages": messages, "max_tokens": spec.max_tokens,
                    "temperature": spec.temperature}
            if gen_params.get("stop_words"):
                data["stop"] = gen_params["stop_words"]
            return {"content-type": "application/json"}, data

        def chat(self, inputs, **kw):
            text = super().chat(inputs, **kw)
            trace.append({"type": "model", "text": text})
            job.event("model", text=text)
            return text

    class PythonSandbox(BaseAction):
        """Runs Python code in a sandbox (its own folder, no network, no other processes) and returns what it
        printed. Use print() for results and plt.savefig('name.png') for plots; files written there are kept."""

        @tool_api
        def run(self, command: str) -> ActionReturn:
            """Run Python code and return what it prints.

            Args:
                command (:class:`str`): Python code
            """
            code = command.split("```python")[-1].split("```")[0] if "```" in command else command
            got = run_code(code, files, limits)
            step = {"tool": "python", "code": code, **got}
            trace.append({"type": "tool", **step})
            job.event("tool", **step)
            ret = ActionReturn(args={"command": code}, type=self.name)
            if got["ok"]:
                ret.result = [{"type": "text", "content": got["output"] or "(no output)"}]
            else:
                ret.errmsg = (got["output"].strip() + "\n" if got["output"].strip() else "") + got["error"]
                ret.state = ActionStatusCode.API_ERROR
            return ret

    llm = OpenAIChat(model_type=ep["model"], key=key or "none", openai_api_base=ep["url"] + "/chat/completions",
                     query_per_second=50, retry=1, max_new_tokens=spec.max_tokens)
    actions = [PythonSandbox()] if "python" in spec.tools else []
    return ReAct(llm=llm, action_executor=ActionExecutor(actions=actions), max_turn=spec.max_turns)


def main(spec: Spec, job: Job) -> dict:
    try:
        ep = target(spec, job.home, job.owner)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT, "start the endpoint again, or name another") from None
    key = ep.get("api_key") or os.environ.get(KEY_SECRET, "")
    trace: list[dict] = [{"type": "user", "text": spec.prompt}]
    agent = build(spec, job, ep, key, trace)
    job.progress(0, spec.max_turns, "turns", f"asking {ep['model']}", force=True)
    try:
        out = agent.chat([*spec.history, {"role": "user", "content": spec.prompt}])
    except Exception as e:     # noqa: BLE001 - the endpoint's failure, said as a sentence
        raise JobError(f"the model endpoint failed: {e}", BAD_INPUT,
                       "check that the endpoint is live and its key is right") from None
    trace.append({"type": "answer", "text": out.response})
    job.event("answer", text=out.response)
    (job.dir / "artifacts" / "trace.json").write_text(json.dumps(trace, ensure_ascii=False, indent=2))
    files = sorted({f for s in trace if s["type"] == "tool" for f in s["files"]})
    print(f"answer: {out.response}", flush=True)
    return {"answer": out.response, "steps": len([s for s in trace if s["type"] == "tool"]), "files": files}


if __name__ == "__main__":
    run(main, Spec)
