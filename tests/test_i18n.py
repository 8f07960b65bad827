"""Every user-facing string exists in both languages, with the same placeholders; every key the pages
use and every key a backend error is raised with is in the table; a refusal reads in the user's language."""
import ast
import pickle
import re
import string
from pathlib import Path

import pytest

from backend.access import users
from backend.core import errors
from backend.runtime import queue
from backend.core.i18n import LANGS, STRINGS

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"err\.[a-z0-9_]+\.[a-z0-9_.]*[a-z0-9_]")      # a refusal's key, wherever it is spelled


def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_every_key_has_every_language_with_the_same_placeholders():
    for key, entry in STRINGS.items():
        assert set(entry) == set(LANGS), key
        assert all(entry[lang].strip() for lang in LANGS), key
        assert fields(entry["en"]) == fields(entry["zh"]), key


def _trees(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _name(node) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def error_classes(trees) -> set[str]:
    """Names of errors.UserError and every class that derives from it, in the code scanned."""
    classes = [(n.name, {_name(b) for b in n.bases}) for _, tree in trees for n in ast.walk(tree)
               if isinstance(n, ast.ClassDef)]
    found = {"UserError"}
    while True:
        more = {name for name, bases in classes if bases & found} - found
        if not more:
            return found
        found |= more


def key_problems(trees) -> list[str]:
    """Where a UserError (or a subclass) is made with a key not in STRINGS, or with a sentence (an
    f-string, a concatenation) instead of a key; and every ``err.<module>.*`` literal not in STRINGS."""
    trees = list(trees)
    classes = error_classes(trees)
    out = []
    for path, tree in trees:
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) in classes and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if arg.value not in STRINGS:
                        out.append(f"{where}:{node.lineno}: key {arg.value!r} is not in backend/core/i18n.py")
                elif isinstance(arg, (ast.JoinedStr, ast.BinOp)):
                    out.append(f"{where}:{node.lineno}: {_name(node.func)} is given a sentence, not a key")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY.fullmatch(node.value) \
                    and node.value not in STRINGS:
                out.append(f"{where}:{node.lineno}: key {node.value!r} is not in backend/core/i18n.py")
    return sorted(set(out))


def test_every_key_a_backend_error_is_raised_with_exists():
    problems = key_problems(_trees("backend", "jobs"))
    assert not problems, "\n".join(problems)


def test_the_key_check_catches_a_missing_key_and_a_sentence():
    code = ("from backend.core.errors import UserError\n"
            "class Mine(UserError):\n    pass\n"
            "class Theirs(Mine):\n    pass\n"
            "def f(x):\n"
            "    raise Theirs('err.queue.no_such_key', x=x)\n"
            "def g(x):\n"
            "    raise Mine(f'job {x} is gone')\n"
            "KEYS = {'a': 'err.ds.also_missing'}\n")
    problems = key_problems([(ROOT / "backend" / "example.py", ast.parse(code))])
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "example.py:7: key 'err.queue.no_such_key'" in text and "example.py:9: Mine is given a sentence" in text
    assert "example.py:10: key 'err.ds.also_missing'" in text


def test_every_key_used_by_the_ui_exists():
    missing = []
    for path, tree in _trees("pages"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) == "t" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                    and node.args[0].value not in STRINGS:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.args[0].value}")
    text = (ROOT / "app.py").read_text(encoding="utf-8")
    missing += [k for k in re.findall(r"""\bt\(\s*["']([a-z0-9_.]*[a-z0-9_])["']\s*[,)]""", text) if k not in STRINGS]
    assert not missing, f"keys used but not in backend/core/i18n.py: {missing}"


def test_a_user_error_is_english_in_str_and_chinese_in_text():
    e = queue.SubmitError("err.queue.not_queued", job=7, state="running")
    assert str(e) == "job 7 is running, not queued"
    assert e.text("zh") == "任务 7 处于 running 状态，不在排队中"
    assert isinstance(e, ValueError) and errors.text(e, "zh") == e.text("zh")
    assert errors.text(RuntimeError("boom"), "zh") == "boom"
    again = pickle.loads(pickle.dumps(e))               # a worker's error crosses processes with its fields
    assert type(again) is queue.SubmitError and again.text("zh") == e.text("zh")
    nested = errors.UserError("err.queue.invalid_spec", kind="finetune",
                              detail=[errors.UserError("err.queue.field", where="lr", msg=errors.UserError("err.ft.lr", value=-1))])
    assert str(nested) == "invalid finetune spec: lr: lr must be above 0 (got -1)"
    assert nested.text("zh") == "finetune 配置无效：lr：lr 必须大于 0（当前为 -1）"


def test_a_refused_submit_reads_in_the_users_language(home):
    """A fine-tune of a model that is not in the registry: refused at submit, English for the CLI and
    the job log, Chinese for a page in 中文."""
    spec = {"base_model": "no-such-model", "datasets": ["sample_sharegpt"], "max_steps": 1}
    with pytest.raises(queue.SubmitError) as e:
        queue.submit("finetune", spec, owner="ann", home=home)
    assert str(e.value) == "no model 'no-such-model' in the registry (Models page lists them)"
    assert e.value.text("zh") == "模型库中没有模型 'no-such-model'（模型页列出了所有模型）"
    with pytest.raises(queue.SubmitError) as e:
        queue.submit("finetune", {**spec, "lr": 0}, owner="ann", home=home)
    assert "lr: lr must be above 0" in str(e.value)
    assert "lr：lr 必须大于 0" in e.value.text("zh") and e.value.text("zh").startswith("finetune 配置无效：")


def test_a_student_stopping_anothers_job_is_told_in_chinese(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", "teach")
    job = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    with pytest.raises(users.Refused) as e:
        queue.cancel(job, home=home, by="bob")
    assert isinstance(e.value, queue.SubmitError)           # what pages catch
    assert str(e.value) == f"job {job} belongs to ann: only they or an instructor can stop it"
    assert e.value.text("zh") == f"任务 {job} 属于 ann：只有提交者本人或讲师可以停止它"
    assert users.audit_log("refused", home=home)[0]["detail"].startswith("stop: job")   # the log stays English
