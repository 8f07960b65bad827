"""Every user-facing string, keyed by id, English and Chinese side by side (one table).

Pages call ``pages.ui.t(key, **fmt)``; the CLI and backend messages stay English.
tests/test_i18n.py checks every key has both languages and every key the code uses exists.
"""
from __future__ import annotations

LANGS = {"en": "English", "zh": "中文"}

STRINGS: dict[str, dict[str, str]] = {
    # --- app and navigation ---
    "app.title": {"en": "Lab Workbench", "zh": "书生·浦语 实验工作台"},
    "app.language": {"en": "Language", "zh": "语言"},
    "app.user": {"en": "User", "zh": "用户"},
    "nav.home": {"en": "Home", "zh": "首页"},
    "nav.jobs": {"en": "Jobs", "zh": "任务"},
    "nav.datasets": {"en": "Datasets", "zh": "数据集"},
    "nav.models": {"en": "Models", "zh": "模型"},
    "nav.finetune": {"en": "Fine-tune", "zh": "微调"},
    "nav.evaluate": {"en": "Evaluate", "zh": "评测"},
    "nav.chat": {"en": "Chat", "zh": "对话"},
    "nav.xcomposer": {"en": "XComposer", "zh": "图文创作"},
    "nav.section.pipeline": {"en": "Pipeline", "zh": "全链路"},
    "nav.section.system": {"en": "System", "zh": "系统"},
    # --- home ---
    "home.intro": {"en": "The whole LLM pipeline of the InternLM camp in one browser tab: every heavy step is a job "
                            "on a shared queue that keeps running when you close the tab.",
                   "zh": "在一个浏览器标签页里完成书生·浦语实战营的全链路：每个耗时步骤都是共享队列中的任务，关闭页面也不会中断。"},
    "home.pipeline": {"en": "Pipeline", "zh": "全链路流程"},
    "home.step.datasets": {"en": "Prepare and check data", "zh": "准备并检查数据"},
    "home.step.models": {"en": "Download or import a model", "zh": "下载或导入模型"},
    "home.step.finetune": {"en": "LoRA / QLoRA fine-tune", "zh": "LoRA / QLoRA 微调"},
    "home.step.evaluate": {"en": "Evaluate with OpenCompass", "zh": "使用 OpenCompass 评测"},
    "home.step.chat": {"en": "Serve and chat", "zh": "部署并对话"},
    "home.step.xcomposer": {"en": "Image-text demo", "zh": "图文多模态演示"},
    "home.hardware": {"en": "Hardware", "zh": "硬件"},
    "home.cpu_only": {"en": "CPU only: {slots} heavy job(s) at a time", "zh": "仅 CPU：同时运行 {slots} 个重任务"},
    "home.gpu_line": {"en": "GPU {index}: {name}, {used:.1f} / {total:.1f} GB in use",
                      "zh": "GPU {index}：{name}，已用 {used:.1f} / {total:.1f} GB"},
    "home.no_worker": {"en": "No worker is running: jobs stay queued until one starts (./workbench up starts it).",
                       "zh": "没有运行中的 worker：任务会一直排队，直到 worker 启动（./workbench up 会启动它）。"},
    "home.worker_ok": {"en": "Worker running (pid {pid})", "zh": "Worker 运行中（pid {pid}）"},
    "home.queue": {"en": "Queue at a glance", "zh": "队列概览"},
    "home.recent": {"en": "Recent jobs", "zh": "最近的任务"},
    # --- job states ---
    "state.queued": {"en": "queued", "zh": "排队中"},
    "state.starting": {"en": "starting", "zh": "启动中"},
    "state.running": {"en": "running", "zh": "运行中"},
    "state.succeeded": {"en": "succeeded", "zh": "成功"},
    "state.failed": {"en": "failed", "zh": "失败"},
    "state.cancelled": {"en": "cancelled", "zh": "已取消"},
    "state.lost": {"en": "lost", "zh": "丢失"},
    # --- jobs page ---
    "jobs.filter.state": {"en": "State", "zh": "状态"},
    "jobs.filter.kind": {"en": "Kind", "zh": "类型"},
    "jobs.filter.owner": {"en": "Owner", "zh": "提交者"},
    "jobs.none": {"en": "No jobs yet.", "zh": "还没有任务。"},
    "jobs.open": {"en": "Open job", "zh": "打开任务"},
    "jobs.col.id": {"en": "ID", "zh": "编号"},
    "jobs.col.kind": {"en": "Kind", "zh": "类型"},
    "jobs.col.state": {"en": "State", "zh": "状态"},
    "jobs.col.owner": {"en": "Owner", "zh": "提交者"},
    "jobs.col.asked": {"en": "Asked", "zh": "申请资源"},
    "jobs.col.given": {"en": "Given", "zh": "分配资源"},
    "jobs.col.queued": {"en": "Queued", "zh": "入队时间"},
    "jobs.col.started": {"en": "Started", "zh": "开始时间"},
    "jobs.col.finished": {"en": "Finished", "zh": "结束时间"},
    "jobs.col.label": {"en": "Label", "zh": "标签"},
    "job.title": {"en": "Job {id}: {kind}", "zh": "任务 {id}：{kind}"},
    "job.state": {"en": "State", "zh": "状态"},
    "job.exit_code": {"en": "Exit code", "zh": "退出码"},
    "job.log": {"en": "Log", "zh": "日志"},
    "job.events": {"en": "Events", "zh": "事件"},
    "job.metrics": {"en": "Metrics", "zh": "指标"},
    "job.spec": {"en": "Spec", "zh": "配置"},
    "job.result": {"en": "Result", "zh": "结果"},
    "job.eta": {"en": "{done} / {total} {unit} · ETA {eta}", "zh": "{done} / {total} {unit} · 预计剩余 {eta}"},
    "job.progress": {"en": "{done} / {total} {unit}", "zh": "{done} / {total} {unit}"},
    "job.cancel": {"en": "Cancel", "zh": "取消"},
    "job.retry": {"en": "Retry", "zh": "重试"},
    "job.clone": {"en": "Clone", "zh": "克隆"},
    "job.cancelling": {"en": "Stopping: SIGTERM sent, SIGKILL follows after the grace period.",
                       "zh": "正在停止：已发送 SIGTERM，宽限期后发送 SIGKILL。"},
    "job.queued_as": {"en": "Queued as job {id}.", "zh": "已提交为任务 {id}。"},
    "job.error": {"en": "Failed ({cls}): {message}", "zh": "失败（{cls}）：{message}"},
    "job.last_lines": {"en": "Last log lines", "zh": "最后几行日志"},
    "job.not_found": {"en": "No job {id}.", "zh": "没有任务 {id}。"},
    "job.cloned": {"en": "Spec of job {id} (edit and submit it from the CLI or its page):",
                   "zh": "任务 {id} 的配置（可修改后通过命令行或对应页面提交）："},
    "job.waiting_engine": {"en": "Waiting for the {engine} engine to be installed.",
                           "zh": "等待 {engine} 引擎安装完成。"},
    # --- error classes: suggestions ---
    "err.oom": {"en": "Out of memory: lower the batch size or max length, enable gradient checkpointing, or use QLoRA.",
                "zh": "内存不足：减小 batch size 或最大长度，开启梯度检查点，或改用 QLoRA。"},
    "err.bad_input": {"en": "The input was not valid: fix the spec or the data and submit again.",
                      "zh": "输入无效：请修正配置或数据后重新提交。"},
    "err.missing_engine": {"en": "An engine or package is missing: install the engine (Jobs → engine_install) and retry.",
                           "zh": "缺少引擎或依赖包：请先安装对应引擎（engine_install 任务）再重试。"},
    "err.download": {"en": "The download failed: check the model id, revision, token and network, then retry (finished files are kept).",
                     "zh": "下载失败：请检查模型 ID、版本、令牌与网络后重试（已完成的文件会保留）。"},
    "err.crash": {"en": "The job crashed: see the last log lines below.", "zh": "任务崩溃：请查看下方最后几行日志。"},
    "err.timeout": {"en": "The job ran past its time limit: raise timeout_s or make the job smaller.",
                    "zh": "任务超时：请增大 timeout_s 或减小任务规模。"},
    "err.cancelled": {"en": "The job was cancelled.", "zh": "任务已取消。"},
    "err.lost": {"en": "The worker stopped under this job: retry it.", "zh": "运行该任务的 worker 已停止：请重试。"},
    # --- engines ---
    "engine.install": {"en": "Install the {engine} engine", "zh": "安装 {engine} 引擎"},
    "engine.missing": {"en": "The {engine} engine is not installed yet.", "zh": "{engine} 引擎尚未安装。"},
    # ---- end of table ----
}


def t(key: str, lang: str = "en", **fmt) -> str:
    entry = STRINGS.get(key)
    if entry is None:
        return key
    text = entry.get(lang) or entry["en"]
    return text.format(**fmt) if fmt else text
