"""GRPO (objective grpo): a real job on a tiny random model whose reward rises, its sampled completions
in the job's events; the presets a student reads; a student's reward code only in the sandbox, where
opening the workspace database, the network or an endless loop fails with a sentence naming the reward;
the submit-time checks as sentences."""
from __future__ import annotations

import json

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import labs, rewards
from backend.runtime import logs, queue, sandbox
from backend.workspace import datasets
from backend.core.errors import UserError
from backend.kinds import finetune as ft_spec
from backend.core.store import open_store
from tests.conftest import run_burst

needs_bwrap = pytest.mark.skipif(sandbox.bwrap() is None, reason="bubblewrap is not installed")
RISE = 0.2            # the reward's rise, first quarter of the steps → last quarter, that the quick job must show


@pytest.fixture
def ws(home, tiny_model):
    """The tiny model registered and a prompt-only dataset (with an answer column)."""
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    rows = [{"prompt": f"Hello, who are you? {i}", "answer": str(i)} for i in range(32)]
    (home / "datasets" / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return home


def spec(**kw) -> dict:
    # full fine-tuning of the random model: a 512-token vocabulary whose tokens are 1–8 characters long,
    # so an answer of 16 tokens can grow from ~25 characters towards the 120 the length reward wants
    return {"base_model": "tiny", "datasets": ["prompts.jsonl"], "objective": "grpo", "method": "full",
            "lr": 1e-2, "beta": 0.0, "max_steps": 60, "batch_size": 8, "grad_accum": 1, "num_generations": 8,
            "max_completion_length": 16, "max_length": 64, "warmup_ratio": 0.0, "scheduler": "constant",
            "gradient_checkpointing": False, "device": "cpu", "name": "tiny-grpo",
            "rewards": [{"kind": "length", "target": 120}], **kw}


def events(job_id, home, type_):
    return [e for e in logs.read_events(job_id, home=home)[0] if e["type"] == type_]


def test_a_grpo_job_raises_its_reward_and_shows_its_completions(ws):
    job_id = queue.submit("finetune", spec(), owner="local", home=ws)
    run_burst(ws, timeout=300)
    job = queue.get(job_id, ws, by=users.OPERATOR)
    result = logs.result(job_id, ws)
    assert job.state == "succeeded", (job, logs.read_log(job_id, home=ws)[0][-3000:])
    assert result["final_reward"] - result["first_reward"] >= RISE, result
    points = events(job_id, ws, "metric")
    assert len(points) == 60 and {"reward", "reward_std", "reward_length", "reward_length_std",
                                  "completion_length", "loss"} <= set(points[-1])
    shown = events(job_id, ws, "completions")
    assert len(shown) == 60 and shown[-1]["step"] == 60
    row = shown[-1]["rows"][0]
    assert row["prompt"].startswith("Hello, who are you?") and row["completion"] and set(row["rewards"]) == {"length"}
    assert row["reward"] == row["rewards"]["length"]
    assert result["model"] == "tiny-grpo"

    # the GRPO lab's check reads this run: passed, with the rise and the last step's best answer
    done = labs.run("grpo", "local", ws)
    assert done["passed"] and done["evidence"], done
    seen = done["checks"][0]["seen"]
    assert seen["job"] == job_id and seen["rise"] >= RISE and seen["completion"] and seen["rewards"][0]["kind"] == "length"
    with pytest.raises(labs.Missing, match=r"did not rise by 5"):
        labs.check_grpo(labs.Ctx("local", ws, {}, []), min_rise=5)
    assert labs.run("grpo", "bob", ws)["checks"][0]["problem"]["key"] == "err.lab.no_grpo"   # not another's run


def test_presets_score_what_they_say():
    assert rewards.length(["x" * 10, "x" * 20, "x" * 40], 20) == [0.5, 1.0, 0.0]
    assert rewards.format_(["<think>a</think> <answer>4</answer>", "4"], rewards.Reward(kind="format").pattern) == [1.0, 0.0]
    assert rewards.contains(["I am InternLM, made by the camp", "hello"], ["internlm", "camp"]) == [1.0, 0.0]
    assert rewards.answer(["<answer>1/2</answer>", "it is 0.5", "3"], ["0.5", "\\frac{1}{2}", "4"], "math") == [1.0, 1.0, 0.0]
    assert rewards.answer(["so 1,234 apples", "12"], ["1234", "13"], "numeric") == [1.0, 0.0]
    assert rewards.answer(["<answer> Paris </answer>", "paris"], ["Paris", "Paris"], "exact") == [1.0, 0.0]
    assert rewards.repetition(["a b c d", "a b a b a b"], 2) == [0.0, -0.6]
    assert rewards.names([rewards.Reward(kind="length"), rewards.Reward(kind="length"),
                          rewards.Reward(kind="python", name="mine")]) == ["length", "length_2", "mine"]


def test_prompt_rows_from_each_format():
    assert datasets.to_prompt({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                              "solution": 7}) == {"prompt": [{"role": "system", "content": "s"},
                                                             {"role": "user", "content": "q"}], "solution": "7"}
    assert datasets.to_prompt({"question": "1+1?", "answer": "2"}) == {"prompt": [{"role": "user", "content": "1+1?"}],
                                                                       "answer": "2"}
    assert datasets.to_prompt({"instruction": "Who are you?", "output": "A helper."})["answer"] == "A helper."
    with pytest.raises(UserError, match="hold no prompts"):
        datasets.to_prompt({"text": "a document"})


# -- student code in the sandbox ----------------------------------------------------------------------
@needs_bwrap
def test_a_reward_function_runs_in_the_sandbox(tmp_path):
    code = "def reward(completions, answer, **_):\n    return [float(a in c) for c, a in zip(completions, answer)]\n"
    f = rewards.sandboxed(code, "mine", tmp_path / "r")
    assert f(["it is 4", "5"], answer=["4", "4"]) == [1.0, 0.0]
    bad = rewards.sandboxed("def reward(completions, **_):\n    return [1.0]\n", "short", tmp_path / "r")
    with pytest.raises(UserError, match="reward short failed in the sandbox: .*one finite number per completion"):
        bad(["a", "b"])


@needs_bwrap
def test_escapes_fail_in_the_sandbox_with_a_sentence_naming_the_reward(tmp_path, home):
    open_store(home)
    db = home / "workbench.db"
    assert db.exists()
    loop = rewards.sandboxed("def reward(completions, **_):\n    while True: pass\n", "spin", tmp_path / "a",
                             sandbox.Limits(cpu_s=1, wall_s=20))
    with pytest.raises(UserError, match="reward spin failed in the sandbox: stopped: the code used more than 1 s of CPU"):
        loop(["a"])
    net = rewards.sandboxed("import socket\ndef reward(completions, **_):\n"
                            "    socket.create_connection(('1.1.1.1', 80), timeout=3)\n    return [1.0]\n",
                            "phone_home", tmp_path / "b")
    with pytest.raises(UserError, match="reward phone_home failed in the sandbox: OSError: .*unreachable"):
        net(["a"])
    steal = rewards.sandboxed(f"import sqlite3\ndef reward(completions, **_):\n"
                              f"    sqlite3.connect('file:{db}?mode=ro', uri=True).execute('select * from jobs')\n"
                              f"    return [1.0]\n", "peek", tmp_path / "c")
    with pytest.raises(UserError, match="reward peek failed in the sandbox: sqlite3.OperationalError: unable to open"):
        steal(["a"])


@needs_bwrap
def test_a_job_whose_reward_opens_the_database_fails_naming_it(ws):
    code = (f"import sqlite3\ndef reward(completions, **_):\n"
            f"    sqlite3.connect('file:{ws / 'workbench.db'}?mode=ro', uri=True).execute('select * from jobs')\n"
            f"    return [1.0] * len(completions)\n")
    job_id = queue.submit("finetune", spec(max_steps=2, rewards=[{"kind": "python", "name": "peek", "code": code}]), owner="local", home=ws)
    run_burst(ws, timeout=300)
    result = logs.result(job_id, ws)
    assert queue.get(job_id, ws, by=users.OPERATOR).state == "failed"
    assert result["error"]["message"].startswith("reward peek failed in the sandbox: sqlite3.OperationalError"), result


# -- submit-time checks ---------------------------------------------------------------------------------
def refusal(**kw) -> str:
    with pytest.raises(queue.SubmitError) as e:
        queue.submit("finetune", spec(**kw), owner="local", home=defaults.home())
    return str(e.value)


def test_submit_refuses_what_cannot_run_with_a_sentence(ws):
    assert "must be divisible by num_generations 8" in refusal(batch_size=4)
    assert "leaves no room for the prompt within max_length 64" in refusal(max_completion_length=64)
    assert "GRPO needs at least one reward" in refusal(rewards=[])
    assert "reads the column 'solution', which the data does not have (columns: answer)" in \
        refusal(rewards=[{"kind": "answer", "column": "solution"}])
    assert "must define reward(completions, **columns)" in refusal(rewards=[{"kind": "python", "code": "x = 1"}])
    assert "the pattern is not a valid regular expression" in refusal(rewards=[{"kind": "format", "pattern": "("}])
    assert "no sampled prompt fits" in refusal(max_length=24, max_completion_length=16)
    assert "beta 0 is only for grpo" in refusal(objective="dpo")
    zh = UserError("err.grpo.batch", batch_size=4, grad_accum=1, n=4, num_generations=8).text("zh")
    assert "必须能被 num_generations 8 整除" in zh


def test_the_cpu_demo_preset_is_a_grpo_recipe_that_checks():
    s = ft_spec.Spec(base_model="x", datasets=["d"], preset="grpo_cpu_demo")
    assert s.objective == "grpo" and s.method == "lora" and s.num_generations == 4 and s.rewards[0].kind == "length"
    rewards.check_spec(s)


# -- the page --------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_the_grpo_cpu_demo_from_the_page_shows_the_reward_chart_and_the_answers(page, home, tiny_model):
    from backend.workspace import datasets
    from tests.conftest import pick, shot, wait_for
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Hello {i}"}) + "\n" for i in range(16)))
    datasets.register(home / "datasets" / "prompts.jsonl", "prompts", "upload", home, owner="local")
    page.set_viewport_size({"width": 1400, "height": 2400})
    page.goto(f"{page.base_url}/finetune")
    page.get_by_role("button", name="Start fine-tuning").wait_for(timeout=60_000)
    form = page.locator(".st-key-ft-form")
    form.locator("label").get_by_text("GRPO (rewards)", exact=True).click()
    pick(page, "ft_datasets_grpo", "prompts")
    page.keyboard.press("Escape")
    form.get_by_text("preset: grpo_cpu_demo").wait_for()          # no GPU here: the CPU demo is the default
    form.get_by_text("kind: length").wait_for()
    page.locator(".st-key-ft-estimate").get_by_text("Estimated duration").wait_for()
    page.locator(".st-key-ft_submit button").click()
    job_id = wait_for(lambda: [j.id for j in queue.list_jobs(kind="finetune", home=home, by=users.OPERATOR)], 30, what="a job")[0]
    assert queue.get(job_id, home, by=users.OPERATOR).spec["objective"] == "grpo"
    run = page.locator(".st-key-ft-run")
    run.get_by_text("reward_length", exact=True).first.wait_for(timeout=180_000)
    answers = run.locator(".st-key-grpo-completions [data-testid='stDataFrame']")
    answers.wait_for(timeout=60_000)
    run.locator("[data-testid='job-state'][data-state='succeeded']").wait_for(state="attached", timeout=300_000)
    assert run.locator("[data-testid='stVegaLiteChart']").count() >= 3
    page.wait_for_timeout(800)
    shot(page, "finetune-grpo")
