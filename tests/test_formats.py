"""Training data as other projects publish it (rows written from each project's documented format):
what it is read as, what is refused and why, what convert keeps, and what the fine-tune job trains
on each row (token ids and loss mask), including tool calls and continued pre-training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.access import users
from backend.workspace import datasets as ds
from backend.pipeline import finetune as ft
from backend.core import defaults, paths
from backend.runtime import logs, queue
from backend.kinds.finetune import Spec
from backend.core.store import open_store
from tests.conftest import run_burst

TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object", "properties": {"a": {}, "b": {}}}}}]
CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
U, A = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
# a chat template with tool support, in the shape of Qwen2.5's (tools in the system turn, calls in tags)
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# (record, format it is detected as, the messages it is read as)
PUBLISHED = {
    "openai tool calls": (
        {"tools": TOOLS, "messages": [U("1+2?"), {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"}, A("It is 3.")]},
        "messages", [U("1+2?"), {"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "c1"}]},
                     {"role": "tool", "content": "3", "tool_call_id": "c1"}, A("It is 3.")]),
    "ms-swift agent messages": (
        {"tools": json.dumps(TOOLS), "messages": [U("1+2?"), {"role": "tool_call", "content": json.dumps(CALL["function"])},
                                                  {"role": "tool_response", "content": "3"}, A("It is 3.")]},
        "messages", [U("1+2?"), {"role": "assistant", "content": "", "tool_calls": [CALL]},
                     {"role": "tool", "content": "3"}, A("It is 3.")]),
    "llama-factory sharegpt function_call": (
        {"tools": json.dumps(TOOLS), "conversations": [
            {"from": "human", "value": "1+2?"}, {"from": "function_call", "value": json.dumps(CALL["function"])},
            {"from": "observation", "value": "3"}, {"from": "gpt", "value": "It is 3."}]},
        "sharegpt", [U("1+2?"), {"role": "assistant", "content": "", "tool_calls": [CALL]},
                     {"role": "tool", "content": "3"}, A("It is 3.")]),
    "ms-swift sharegpt": (
        {"system": "Be brief.", "conversation": [{"human": "hi", "assistant": "hello"}, {"human": "bye", "assistant": "ciao"}]},
        "sharegpt", [{"role": "system", "content": "Be brief."}, U("hi"), A("hello"), U("bye"), A("ciao")]),
    "ms-swift query/response/history": (
        {"system": "Be brief.", "query": "and 2+2?", "response": "4", "history": [["1+1?", "2"]]},
        "alpaca", [{"role": "system", "content": "Be brief."}, U("1+1?"), A("2"), U("and 2+2?"), A("4")]),
    "content parts": (
        {"messages": [{"role": "user", "content": [{"type": "text", "value": "hi "}, {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]},
        "messages", [U("hi there"), A("hello")]),
    "xtuner with system": (
        {"conversation": [{"system": "Be brief.", "input": "hi", "output": "hello"}, {"input": "bye", "output": "ciao"}]},
        "xtuner", [{"role": "system", "content": "Be brief."}, U("hi"), A("hello"), U("bye"), A("ciao")]),
    "xtuner pre-training": (
        {"conversation": [{"input": "", "output": "Plain text to learn."}]}, "xtuner", [A("Plain text to learn.")]),
}


def jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(PUBLISHED))
def test_published_formats_are_read_as_their_projects_define_them(tmp_path, case):
    rec, fmt, messages = PUBLISHED[case]
    path = jsonl(tmp_path / "d.jsonl", [rec] * 3)
    assert ds.detect_format(path) == fmt
    assert ds.validate(path)["ok"], ds.validate(path)["errors"]
    chat = ds.load_messages(path)[0]
    assert list(chat) == messages
    assert chat.tools == (TOOLS if "tools" in rec else None)


@pytest.mark.parametrize("rec, needle", [
    ({"messages": [U("<image>What is this?"), A("A cat.")], "images": ["cat.png"]}, 'the row has images (the "images" field)'),
    ({"conversations": [{"from": "human", "value": "<video>?"}, {"from": "gpt", "value": "x"}], "videos": ["a.mp4"]},
     'the row has videos (the "videos" field)'),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}, A("A cat.")]},
     "messages[0] has an image_url part"),
    ({"messages": [U("hi"), A("hello")], "rejected_response": "go away"}, 'a "rejected_response" answer'),
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "hello"},
      "rejected": {"from": "gpt", "value": "go away"}}, 'a "rejected" answer'),
    ({"messages": [U("hi"), A("go away")], "label": False}, "label is false: a KTO row"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "go away"}], "kto_tag": False},
     "kto_tag is false"),
])
def test_rows_sft_would_train_wrongly_are_refused_with_the_reason(tmp_path, rec, needle):
    path = jsonl(tmp_path / "d.jsonl", [rec])
    report = ds.validate(path)
    assert not report["ok"] and needle in report["errors"][0]["reason"]
    with pytest.raises(ds.DatasetError, match="line 1: "):
        ds.load_messages(path)
    # a KTO row marked good is an SFT row
    assert ds.load_messages(jsonl(tmp_path / "good.jsonl", [{"messages": [U("hi"), A("hello")], "label": True}]))


def test_preference_and_text_files_point_to_their_objective(tmp_path):
    pairs = jsonl(tmp_path / "dpo.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}] * 2)
    assert ds.detect_format(pairs) == "preference"
    with pytest.raises(ds.DatasetError, match="train it with objective dpo, orpo or kto"):
        ds.load_messages(pairs)
    text = jsonl(tmp_path / "c4.jsonl", [{"text": "Some web text."}] * 2)
    with pytest.raises(ds.DatasetError, match="objective pretrain"):
        ds.load_messages(text)
    assert ds.load_texts(text) == ["Some web text."] * 2
    with pytest.raises(ds.DatasetError, match="a conversation, not plain text"):
        ds.load_texts(jsonl(tmp_path / "chat.jsonl", [{"messages": [U("hi"), A("hello")]}]))


def test_opencompass_formats_are_told_apart(tmp_path):
    chatml = jsonl(tmp_path / "c.jsonl", [{"question": [{"role": "system", "content": "Answer."}, U("2+2?")],
                                           "answer": ["4"]}] * 2)
    assert ds.detect_format(chatml) == "chatml" and ds.validate(chatml)["ok"]
    no_answer = jsonl(tmp_path / "q.jsonl", [{"question": "Write a poem."}] * 2)
    assert ds.detect_format(no_answer) == "qa" and ds.validate(no_answer)["ok"]


def test_file_problems_get_a_sentence(home, tmp_path):
    rows = [{"messages": [U(f"hi {i}"), A("hello")]} for i in range(3)]
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode("utf-16-le"))
    assert "UTF-16 encoded (without a byte-order mark); save it as UTF-8" in ds.validate(utf16)["errors"][0]["reason"]
    commas = tmp_path / "c.jsonl"
    commas.write_text("".join(json.dumps(r) + ",\n" for r in rows))
    assert "the line ends with ','" in ds.validate(commas)["errors"][0]["reason"]
    zh = ds.validate(commas, lang="zh")                  # the same problems in the user's language
    assert zh["errors"][0]["reason"].startswith("第 1 行：JSON 无效") and "该行以“,”结尾" in zh["errors"][0]["reason"]
    assert zh["summary"] == "0 行有效，3 个问题：3 JSON 无效", zh["summary"]
    assert "UTF-16 编码（无字节顺序标记）" in ds.validate(utf16, lang="zh")["errors"][0]["reason"]
    for empty in ("[]", "\n\n"):
        (tmp_path / "e.json").write_text(empty)
        report = ds.validate(tmp_path / "e.json")
        assert not report["ok"] and "holds no records" in report["errors"][0]["reason"]
        assert "中没有记录" in ds.validate(tmp_path / "e.json", lang="zh")["errors"][0]["reason"]
    wrapped = home / "datasets" / "w.json"
    wrapped.parent.mkdir(exist_ok=True)
    wrapped.write_text(json.dumps({"version": 1, "data": rows}, indent=2))
    assert ds.validate(wrapped)["ok"] and ds.detect_format(wrapped) == "messages"
    entry = ds.register(wrapped, "w", "upload", home, owner="local")
    assert entry.meta["rows"] == 3 and entry.meta["format"] == "messages"


def test_convert_keeps_what_is_trained_or_says_what_it_could_not(home):
    masked = {"messages": [{"role": "system", "content": "Be brief."}, U("1+1?"), {**A("3"), "loss": False},
                           U("Sure?"), A("2")]}
    tools = PUBLISHED["openai tool calls"][0]
    pretrain = PUBLISHED["xtuner pre-training"][0]
    src = jsonl(home / "mix.jsonl", [masked, tools, {"messages": [A("Plain text to learn.")]}])
    for fmt, kept, lost in [("messages", 3, []), ("sharegpt", 2, ["loss flags"]),
                            ("alpaca", 0, ["loss flags", "tools and tool calls", "turns as they are"]),
                            ("xtuner", 1, ["loss flags", "tools and tool calls"])]:
        if not kept:
            with pytest.raises(ds.DatasetError, match="no row of mix.jsonl could be converted"):
                ds.convert(src, fmt, home=home, owner="local")
            continue
        out = ds.convert(src, fmt, home=home, owner="local")
        assert out["rows"] == kept and [lost_ in str(e["reason"]) for e, lost_ in zip(out["errors"], lost)] == [True] * len(lost)
        assert ds.validate(out["path"])["ok"]
        back = ds.load_messages(out["path"])
        originals = [ds.to_messages(r, "messages") for r in (masked, tools, {"messages": [A("Plain text to learn.")]})]
        for chat in back:      # every kept row trains what its source row trained, with the same system and tools
            same = [o for o in originals if [m["content"] for m in o] == [m["content"] for m in chat]]
            assert same and [ft.formats.trained(m) for m in same[0]] == [ft.formats.trained(m) for m in chat]
            assert chat.tools == same[0].tools
    # XTuner pre-training rows convert to messages and validate (they were alpaca rows that didn't)
    out = ds.convert(jsonl(home / "pt.jsonl", [pretrain] * 2), "messages", home=home, owner="local")
    assert out["rows"] == 2 and ds.validate(out["path"])["ok"]


# -- what the fine-tune job trains on each row --------------------------------------------------------
@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tok, sample) -> str:
    ids, labels = sample
    assert len(ids) == len(labels) and all(l in (-100, i) for i, l in zip(ids, labels))
    return tok.decode([i for i, l in zip(ids, labels) if l != -100])


def test_tool_call_rows_render_through_the_models_template_and_train_the_calls(tok):
    from jobs.finetune import tokenize
    chat = ds.to_messages(PUBLISHED["llama-factory sharegpt function_call"][0], "sharegpt")
    tool_tok = tok.__class__.from_pretrained(tok.name_or_path)
    tool_tok.chat_template = TOOL_TEMPLATE
    ids, labels = tokenize(tool_tok, chat, 512)
    full = tool_tok.decode(ids)
    assert full.startswith("<|im_start|>system\n" + json.dumps(TOOLS[0]))           # the tools are rendered
    assert ids == tool_tok(full, add_special_tokens=False)["input_ids"]
    assert trained_text(tool_tok, (ids, labels)) == (
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call><|im_end|>\nIt is 3.<|im_end|>\n')
    # the observation and the prompt are never trained
    with pytest.raises(ValueError, match="chat template has no tool support"):
        ft.check_tools([chat], tok.chat_template, "tiny")


def test_a_first_message_from_the_assistant_trains_its_text_not_the_template_around_it(tok):
    from jobs.finetune import tokenize
    qwen_like = tok.__class__.from_pretrained(tok.name_or_path)   # a template with a default system prompt
    qwen_like.chat_template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a bot.<|im_end|>\n"
                               "{% endif %}" + tok.chat_template)
    ids, labels = tokenize(qwen_like, ds.to_messages({"messages": [A("Hello, I am here."), U("Who?"), A("A helper.")]},
                                                     "messages"), 512)
    assert "You are a bot." in qwen_like.decode(ids)
    assert trained_text(qwen_like, (ids, labels)) == "Hello, I am here.<|im_end|>\nA helper.<|im_end|>\n"
    # only assistant text (ms-swift's / XTuner's pre-training rows): plain text + EOS, every token trained
    ids, labels = tokenize(qwen_like, ds.to_messages(PUBLISHED["xtuner pre-training"][0], "xtuner"), 512)
    assert ids == qwen_like("Plain text to learn.")["input_ids"] + [qwen_like.eos_token_id]
    assert labels == ids


def test_pretrain_samples_are_every_token_of_each_document_cut_to_max_length(tok):
    from jobs.finetune import pack, text_samples
    docs = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello, who are you?"]
    samples = text_samples(tok, docs, 16)
    whole = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    assert [i for ids, _ in samples for i in ids] == whole[0] + whole[1]
    assert all(len(ids) <= 16 and labels == ids for ids, labels in samples)
    assert len(pack(samples, 32, True)) < len(samples)            # packed several to a row


def test_continued_pretraining_lowers_the_loss_on_its_text(home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "wiki.txt").write_text("The quick brown fox jumps over the lazy dog. 0123456789\n" * 30)
    spec = {"base_model": "tiny", "datasets": ["wiki.txt"], "objective": "pretrain", "method": "full", "lr": 1e-2,
            "max_length": 64, "batch_size": 2, "grad_accum": 1, "max_steps": 12,
            "gradient_checkpointing": False}
    assert ft.check(Spec(**spec), home, gpu_list=[])["rows_checked"] == 30
    job_id = queue.submit("finetune", spec, home=home, owner="local")
    proc = run_burst(home, timeout=300)
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "succeeded", proc.stdout + logs.tail(job_id, 40, home=home)
    losses = [e["loss"] for e in logs.read_events(job_id, home=home)[0] if e["type"] == "metric" and "loss" in e]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    with pytest.raises(queue.SubmitError, match="objective pretrain"):
        queue.submit("finetune", {**spec, "objective": "sft"}, home=home, owner="local")


def test_llamafactory_dataset_info_gives_each_dataset_it_describes(home):
    from backend.workspace.dataset_info import import_dataset_info
    d = home / "datasets"
    d.mkdir(exist_ok=True)
    jsonl(d / "qa_cols.jsonl", [{"q": "1+1?", "a": "2", "sys": "Be brief.", "hist": [["hi", "hello"]]}] * 2)
    jsonl(d / "openai_style.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}]}] * 2)
    jsonl(d / "pairs.jsonl", [{"instruction": "hi", "input": "", "chosen": "hello", "rejected": "go away"}] * 2)
    for f in ("qa_cols", "openai_style", "pairs"):           # uploaded first, as the Datasets page does
        ds.register(d / f"{f}.jsonl", f, "upload", home, owner="local")
    info = {
        "qa": {"file_name": "qa_cols.jsonl", "columns": {"prompt": "q", "response": "a", "system": "sys",
                                                         "history": "hist"}},
        "chat": {"file_name": "openai_style.jsonl", "formatting": "sharegpt",
                 "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        "dpo": {"file_name": "pairs.jsonl", "ranking": True,
                "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "hub": {"hf_hub_url": "someone/some-data"},
        "missing": {"file_name": "not_uploaded.json"},
    }
    out = import_dataset_info(json.dumps(info), home, owner="local")
    assert [(i["name"], i["format"], i["rows"]) for i in out["imported"]] == [
        ("qa", "alpaca", 2), ("chat", "sharegpt", 2), ("dpo", "preference", 2)]
    assert "on a hub (someone/some-data)" in str(out["skipped"][0]) and "not_uploaded.json is not in the workspace" in str(out["skipped"][1])
    assert "其数据在模型中心" in out["skipped"][0].text("zh")
    assert list(ds.load_messages(d / "qa.jsonl")[0]) == [{"role": "system", "content": "Be brief."}, U("hi"), A("hello"),
                                                          U("1+1?"), A("2")]
    assert list(ds.load_messages(d / "chat.jsonl")[0]) == [U("hi"), A("hello")]
    with pytest.raises(ds.DatasetError, match="objective dpo, orpo or kto"):
        ds.load_messages(d / "dpo.jsonl")
    with pytest.raises(ds.DatasetError, match="must be an object of dataset entries"):
        import_dataset_info("[]", home, owner="local")


# -- preference tuning (TRL) ---------------------------------------------------------------------
PAIR = {"prompt": [U("Who are you?")], "chosen": [A("I am a helpful assistant.")], "rejected": [A("The quick brown fox.")]}
PAIRS_AS_PUBLISHED = {
    "trl": {"prompt": "Who are you?", "chosen": "I am a helpful assistant.", "rejected": "The quick brown fox."},
    "llama-factory alpaca ranking": {"instruction": "Who are you?", "input": "", "chosen": "I am a helpful assistant.",
                                     "rejected": "The quick brown fox."},
    "llama-factory sharegpt ranking": {"conversations": [{"from": "human", "value": "Who are you?"}],
                                       "chosen": {"from": "gpt", "value": "I am a helpful assistant."},
                                       "rejected": {"from": "gpt", "value": "The quick brown fox."}},
    "ms-swift rejected_response": {"messages": [U("Who are you?"), A("I am a helpful assistant.")],
                                   "rejected_response": "The quick brown fox."},
}


def test_preference_rows_of_each_project_read_as_one_pair(tmp_path):
    from backend.pipeline.preference import load_preferences
    for case, rec in PAIRS_AS_PUBLISHED.items():
        path = jsonl(tmp_path / "p.jsonl", [rec])
        assert load_preferences(path, "dpo") == [PAIR], case
        # for KTO a pair is one good and one bad answer
        assert load_preferences(path, "kto") == [{"prompt": PAIR["prompt"], "completion": PAIR["chosen"], "label": True},
                                                 {"prompt": PAIR["prompt"], "completion": PAIR["rejected"], "label": False}]
    kto = [{"messages": [U("Who are you?"), A("The quick brown fox.")], "label": False},
           {"conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "I am a helpful assistant."}],
            "kto_tag": True},
           {"prompt": "Who are you?", "completion": "The quick brown fox.", "label": False}]
    path = jsonl(tmp_path / "kto.jsonl", kto)
    assert [r["label"] for r in load_preferences(path, "kto")] == [False, True, False]
    with pytest.raises(ds.DatasetError, match="DPO needs chosen and rejected answers; use objective kto"):
        load_preferences(path, "dpo")
    with pytest.raises(ds.DatasetError, match="line 1: not preference data"):
        load_preferences(jsonl(tmp_path / "sft.jsonl", [{"messages": [U("hi"), A("hello")]}]), "dpo")


@pytest.fixture
def ws_pairs(home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    rows = [{**PAIRS_AS_PUBLISHED["llama-factory alpaca ranking"], "instruction": f"Who are you? {i}"} for i in range(16)]
    jsonl(home / "datasets" / "pairs.jsonl", rows)
    return home


def dpo_spec(**kw) -> dict:
    return {"base_model": "tiny", "datasets": ["pairs.jsonl"], "objective": "dpo", "lr": 1e-2, "lora_r": 8,
            "lora_dropout": 0.0, "max_length": 128, "batch_size": 4, "grad_accum": 1, "max_steps": 8,
            "gradient_checkpointing": False, "device": "cpu", **kw}


def test_dpo_trains_the_chosen_and_rejected_answers_through_the_template(ws_pairs, tmp_path):
    from jobs.common import Job
    from jobs.finetune import Run
    from jobs.preference import trainer
    (tmp_path / "job").mkdir()
    run = Run(Spec(**dpo_spec()), Job(tmp_path / "job"))
    run.load()
    rows = ft.load_preference_rows([ws_pairs / "datasets" / "pairs.jsonl"], "dpo")
    row = trainer(run, rows).train_dataset[0]
    tok = run.tok
    prompt = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert row["prompt_ids"] == tok(prompt, add_special_tokens=False)["input_ids"]
    # trained: each answer's tokens after the prompt, with its end token; never the prompt
    assert tok.decode(row["chosen_ids"]) == "I am a helpful assistant.<|im_end|>\n"
    assert tok.decode(row["rejected_ids"]) == "The quick brown fox.<|im_end|>\n"
    whole = tok.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)
    assert row["prompt_ids"] + row["chosen_ids"] == tok(whole, add_special_tokens=False)["input_ids"]


def test_dpo_run_raises_the_chosen_vs_rejected_margin(ws_pairs):
    job_id = queue.submit("finetune", dpo_spec(name="tiny-dpo"), owner="local", home=ws_pairs)
    proc = run_burst(ws_pairs, timeout=300)
    job = queue.get(job_id, ws_pairs, by=users.OPERATOR)
    assert job.state == "succeeded", proc.stdout + logs.tail(job_id, 40, home=ws_pairs)
    points = [e for e in logs.read_events(job_id, home=ws_pairs)[0] if e["type"] == "metric"]
    assert len(points) == 8 and {"loss", "margin", "reward_chosen", "reward_rejected", "lr"} <= set(points[0])
    assert points[-1]["margin"] > points[0]["margin"] + 0.1 and points[-1]["loss"] < points[0]["loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator   # TRL's rewards: TensorBoard too
    acc = EventAccumulator(str(paths.job_dir(job_id, ws_pairs) / defaults.TENSORBOARD_DIR))
    acc.Reload()
    assert [e.value for e in acc.Scalars("margin")] == pytest.approx([p["margin"] for p in points], rel=1e-6)
    assert open_store(ws_pairs).get("adapter", "tiny-dpo").meta["spec"]["objective"] == "dpo"
    # an SFT run on the same pairs is refused with the way to train them
    with pytest.raises(queue.SubmitError, match="objective dpo, orpo or kto"):
        queue.submit("finetune", dpo_spec(objective="sft"), owner="local", home=ws_pairs)


@pytest.mark.parametrize("objective", ["orpo", "kto"])
def test_orpo_and_kto_runs_lower_their_loss(ws_pairs, objective):
    job_id = queue.submit("finetune", dpo_spec(objective=objective), owner="local", home=ws_pairs)
    proc = run_burst(ws_pairs, timeout=300)
    job = queue.get(job_id, ws_pairs, by=users.OPERATOR)
    assert job.state == "succeeded", proc.stdout + logs.tail(job_id, 40, home=ws_pairs)
    losses = [e["loss"] for e in logs.read_events(job_id, home=ws_pairs)[0] if e["type"] == "metric"]
    assert len(losses) == 8 and losses[-1] < losses[0]


# -- held-out published data (issue 30) ---------------------------------------------------------
LLAMAFACTORY = Path(__file__).parent / "fixtures" / "llamafactory"


def uploaded(home: Path, name: str, data: bytes | None = None) -> Path:
    """A file of LLaMA-Factory's data/ folder uploaded to the workspace (as the Datasets page does)."""
    path = ds.datasets_dir(home) / name
    path.write_bytes(data if data is not None else (LLAMAFACTORY / name).read_bytes())
    ds.register(path, Path(name).stem, "upload", home, owner="local")
    return path


def test_llamafactory_pretraining_entries_import_as_text_the_pretrain_objective_reads(home):
    """c4_demo and wiki_demo (only a ``prompt`` column) are documents for pre-training, not instructions."""
    from backend.workspace.dataset_info import import_dataset_info
    for name in ("alpaca_zh_demo.json", "dpo_en_demo.json", "wiki_demo.txt", "c4_demo.jsonl"):
        uploaded(home, name)
    out = import_dataset_info((LLAMAFACTORY / "dataset_info.json").read_bytes(), home, owner="local")
    assert out["skipped"] == []
    got = {i["entry"]: (i["format"], i["rows"]) for i in out["imported"]}
    assert list(got) == ["alpaca_zh_demo", "dpo_en_demo", "wiki_demo", "c4_demo"] and got["dpo_en_demo"][1] == 2
    assert (got["alpaca_zh_demo"], got["wiki_demo"], got["c4_demo"]) == (("alpaca", 3), ("text", 3), ("text", 3))
    made = {i["entry"]: ds.datasets_dir(home) / f"{i['name']}.jsonl" for i in out["imported"]}
    wiki = (LLAMAFACTORY / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    assert ft.load_texts([made["wiki_demo"]]) == wiki
    c4 = [json.loads(line)["text"] for line in (LLAMAFACTORY / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    assert ft.load_texts([made["c4_demo"]]) == c4
    assert ds.validate(made["c4_demo"])["ok"] and ds.validate(made["wiki_demo"])["ok"]


def test_dataset_info_says_which_rows_it_left_out_and_why(home):
    """A GBK copy of alpaca_zh_demo imported 0 rows with no reason; a file with one bad line lost it silently."""
    from backend.workspace.dataset_info import import_dataset_info
    uploaded(home, "alpaca_zh_demo.json", (LLAMAFACTORY / "alpaca_zh_demo.json").read_text(encoding="utf-8").encode("gbk"))
    rows = [json.loads(line) for line in (LLAMAFACTORY / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    uploaded(home, "c4_demo.jsonl", "\n".join([json.dumps(rows[0]), '{"text": "cut', json.dumps(rows[1]),
                                                 json.dumps({"url": "no text"})]).encode())
    info = json.loads((LLAMAFACTORY / "dataset_info.json").read_text())
    out = import_dataset_info({k: info[k] for k in ("alpaca_zh_demo", "c4_demo")}, home, owner="local")
    assert [(i["entry"], i["rows"]) for i in out["imported"]] == [("c4_demo", 2)]
    gbk, c4 = (str(e) for e in out["skipped"])
    assert gbk.startswith("alpaca_zh_demo: no row of alpaca_zh_demo.json could be read, nothing imported: ") and \
        "Chinese in GBK/GB18030 encoding, not UTF-8; save the file as UTF-8" in gbk, gbk
    assert c4.startswith("c4_demo: 2 of 4 rows of c4_demo.jsonl could not be read and were left out; the first: "
                         "line 2: invalid JSON"), c4
    assert "4 行中有 2 行无法读取" in out["skipped"][1].text("zh")


def test_llamafactory_v1_dpo_rows_are_preference_pairs(tmp_path):
    """LLaMA-Factory v1's DPOSample: chosen_messages / rejected_messages, content as [{"type": "text", "value"}]."""
    from backend.pipeline.preference import load_preferences
    path = LLAMAFACTORY / "v1_dpo_demo.jsonl"
    assert ds.detect_format(path) == "preference"
    with pytest.raises(ds.DatasetError, match="objective dpo, orpo or kto"):
        ds.load_messages(path)
    published = json.loads((LLAMAFACTORY / "dpo_en_demo.json").read_text(encoding="utf-8"))
    assert load_preferences(path, "dpo") == [
        {"prompt": [U(r["conversations"][0]["value"])], "chosen": [A(r["chosen"]["value"])],
         "rejected": [A(r["rejected"]["value"])]} for r in published]
    assert len(load_preferences(path, "kto")) == 4
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    odd = {**first, "rejected_messages": [U("another question"), first["rejected_messages"][1]]}
    with pytest.raises(ds.DatasetError, match="line 1: chosen_messages and rejected_messages must hold the same"):
        load_preferences(jsonl(tmp_path / "odd.jsonl", [odd]), "dpo")
    # for SFT a row carrying rejected_messages is a pair, not a row to learn every answer of
    report = ds.validate(jsonl(tmp_path / "sft.jsonl", [{"messages": [U("hi"), A("hello")],
                                                          "rejected_messages": [U("hi"), A("go away")]}]))
    assert not report["ok"] and 'a "rejected_messages" answer' in report["errors"][0]["reason"]


def test_rows_whose_every_reply_is_loss_false_fail_validation(tmp_path):
    """The fine-tune leaves such a row out: validation says so instead of passing it."""
    silent = {"messages": [U("hi"), {**A("hello"), "loss": False}, U("bye"), {**A("ciao"), "loss": False}]}
    path = jsonl(tmp_path / "m.jsonl", [{"messages": [U("hi"), A("hello")]}, silent])
    report = ds.validate(path)
    assert not report["ok"] and report["good"] == 1 and [e["line"] for e in report["errors"]] == [2]
    assert "every reply is marked loss: false, so the row trains nothing" in report["errors"][0]["reason"]
    assert "没有可训练的内容" in ds.validate(path, lang="zh")["errors"][0]["reason"]
    assert not ft.usable(ds.to_messages(silent, "messages"))          # what the fine-tune does with it


def test_a_row_in_another_format_says_so_not_nonetype(tmp_path):
    """An alpaca file with one messages row (and one row without an instruction): the fine-tune's reading says
    which, not "instruction must be a string, not NoneType"."""
    alpaca = {"instruction": "1+1?", "input": "", "output": "2"}
    path = jsonl(tmp_path / "mix.jsonl", [alpaca, alpaca, {"messages": [U("hi"), A("hello")]}])
    with pytest.raises(ds.DatasetError) as e:
        ds.load_messages(path)
    assert str(e.value) == "mix.jsonl line 3: this row is in messages format, but the file is alpaca: keep one format in a file"
    assert "NoneType" not in e.value.text("zh") and "该行是 messages 格式" in e.value.text("zh")
    out = ds.convert(path, "messages", home=tmp_path, owner="local")
    assert out["rows"] == 2 and "this row is in messages format" in str(out["errors"][0]["reason"])
    with pytest.raises(ds.DatasetError, match="line 3: instruction is missing"):
        ds.load_messages(jsonl(tmp_path / "no_q.jsonl", [alpaca, alpaca, {"instruction": None, "output": "2"}]))


def test_files_convert_cannot_handle_are_not_told_to_convert(tmp_path):
    """An evaluation set, OpenCompass ChatML, or rows of no format: convert refuses them too, so the fine-tune's
    refusal says what the file is instead of "convert it first"."""
    chatml = Path(__file__).parent / "fixtures" / "opencompass" / "chatml_demo.jsonl"
    mcq = jsonl(tmp_path / "mcq.jsonl", [{"question": "2+2?", "A": "3", "B": "4", "answer": "B"}] * 2)
    odd = jsonl(tmp_path / "odd.jsonl", [{"prompt_text": "hi", "reply": "hello"}] * 2)
    for path, says in ((mcq, "mcq.jsonl is an evaluation set (mcq: questions with reference answers): use it on the "
                             "Evaluate page"),
                       (chatml, "chatml_demo.jsonl is an evaluation set (chatml"),
                       (odd, "odd.jsonl: its rows are in no training format; fine-tuning reads messages")):
        with pytest.raises(ds.DatasetError) as e:
            ds.load_messages(path)
        assert str(e.value).startswith(says) and "convert" not in str(e.value) and "转换" not in e.value.text("zh")
        with pytest.raises(ds.DatasetError, match="only messages, sharegpt, alpaca, xtuner can be converted"):
            ds.convert(path, "messages", home=tmp_path, owner="local")
