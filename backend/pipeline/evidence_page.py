"""A passed lab's signed evidence (backend/pipeline/labs.py ``sign``) as one printable HTML page a TA opens in a
browser: who, which lab, when, each check with what it saw (the answers, base vs tuned, the score, the
loss), small bar charts drawn as inline SVG, the artifacts with their hashes. No script, no outside
resource: it prints as it shows.

The signed record travels inside the page, as JSON in a ``<script type="application/json">`` block, so
``python -m backend labs verify PAGE.html`` checks the page itself (``embedded``): the record's signature,
and that the page is byte for byte what that record renders (``page`` is deterministic: UTC times, no
locale), so its visible text cannot be edited apart from the record.
"""
from __future__ import annotations

import html
import json
import re
import time

from backend.core import i18n

EMBED_ID = "workbench-evidence"
_EMBED = re.compile(rb'<script type="application/json" id="' + EMBED_ID.encode() + rb'">(.*?)</script>', re.S)
_SCALARS = ("model", "name", "server", "base_server", "eval", "dataset", "metric", "score", "answer", "memory_gb",
            "method", "quantized_from", "job", "steps", "first_loss", "final_loss", "adapter", "prompt", "source", "repo",
            "base", "base_score", "gain")
CSS = """body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;max-width:52rem;margin:2rem auto;color:#111;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.1rem;border-bottom:1px solid #ccc;margin-top:1.6rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#0a7a2f;font-weight:600}
.fail{color:#b00020;font-weight:600}code{font-size:.85em;word-break:break-all}.meta td:first-child{width:11rem}
.note{color:#555;font-size:.9em}@media print{body{margin:0}h2{break-after:avoid}table{break-inside:avoid}}"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _bars(values: dict[str, float]) -> str:
    """Horizontal bars, one per value, scaled to the largest (a chart that prints)."""
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    if not values:
        return ""
    top = max(max(values.values()), 1e-9)
    rows, h = [], 22
    for i, (name, v) in enumerate(values.items()):
        w = max(1.0, 300 * max(v, 0) / top)
        rows.append(f'<text x="0" y="{i * h + 15}" font-size="12">{_e(name)[:28]}</text>'
                    f'<rect x="190" y="{i * h + 4}" width="{w:.1f}" height="14" fill="#4a78c2"/>'
                    f'<text x="{196 + w:.1f}" y="{i * h + 15}" font-size="12">{v:g}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{len(values) * h + 4}" role="img">'
            + "".join(rows) + "</svg>")


def _check(c: dict, lang: str) -> str:
    t = lambda key, **f: _e(i18n.t(key, lang, **f))          # noqa: E731
    seen = c.get("seen") or {}
    state = f'<span class="pass">{t("evidence.passed")}</span>' if c.get("passed") else \
        f'<span class="fail">{t("evidence.not_passed")}</span>'
    out = [f"<h2>{_e(c.get('check'))} · {state}</h2>"]
    answers, base = seen.get("answers") or seen.get("answers_after") or {}, seen.get("base_answers") or {}
    if isinstance(answers, dict) and answers:
        out.append(f"<table><tr><th>{t('evidence.question')}</th><th>{t('evidence.answer')}</th>"
                   + (f"<th>{t('evidence.base_answer')}</th>" if base else "") + "</tr>")
        for q, a in answers.items():
            out.append(f"<tr><td>{_e(q)}</td><td>{_e(a)}</td>" + (f"<td>{_e(base.get(q))}</td>" if base else "") + "</tr>")
        out.append("</table>")
    facts = [(k, seen[k]) for k in _SCALARS if seen.get(k) not in (None, "", [], {})]
    if facts:
        out.append('<table class="meta">' + "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>"
                                                    for k, v in facts) + "</table>")
    if isinstance(seen.get("scores"), dict) and seen["scores"]:
        out.append(f"<p>{t('evidence.scores', metric=seen.get('metric') or 'score', dataset=seen.get('dataset') or '')}</p>"
                   + _bars(seen["scores"]))
    if seen.get("first_loss") is not None and seen.get("final_loss") is not None:
        out.append(f"<p>{t('evidence.loss')}</p>" + _bars({i18n.t("evidence.loss.first", lang): seen["first_loss"],
                                                           i18n.t("evidence.loss.final", lang): seen["final_loss"]}))
    if isinstance(seen.get("gpu_only"), dict):
        out.append(f'<p class="note">{_e(seen["gpu_only"].get(lang) or seen["gpu_only"].get("en"))}</p>')
    if seen.get("code"):
        out.append(f"<pre><code>{_e(seen['code'])}</code></pre>")
    arts = c.get("artifacts") or []
    if arts:
        out.append(f"<table><tr><th>{t('evidence.artifact')}</th><th>id</th><th>sha256</th></tr>")
        for a in arts:
            files = "<br>".join(f"{_e(n)}: <code>{_e(h)}</code>" for n, h in (a.get("files") or {}).items())
            out.append(f"<tr><td>{_e(a.get('type'))} {_e(a.get('name'))}</td><td>{_e(a.get('id'))}</td><td>{files}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def page(signed: dict, lang: str) -> str:
    """The HTML page of a signed evidence document ``{"evidence", "signature", "alg"}`` in ``lang``."""
    rec = signed["evidence"]
    t = lambda key, **f: _e(i18n.t(key, lang, **f))          # noqa: E731
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.get("checked_at") or 0))   # the same page anywhere
    embedded = json.dumps(signed, ensure_ascii=False, indent=1).replace("<", "\\u003c")   # no "</script>" inside
    meta = [(t("evidence.student"), _e(rec.get("student"))), (t("evidence.lab"), f"{_e(rec.get('lab'))} · {_e(rec.get('title'))}"),
            (t("evidence.camp"), _e(rec.get("camp"))), (t("evidence.checked_at"), _e(when)),
            (t("evidence.job"), _e(rec.get("job"))),
            (t("evidence.signature"), f"<code>{_e(signed.get('alg'))} {_e(signed.get('signature'))}</code>")]
    return "\n".join([
        f'<!DOCTYPE html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">',
        f"<title>{t('evidence.page_title', lab=rec.get('lab'), student=rec.get('student'))}</title><style>{CSS}</style></head><body>",
        f"<h1>{t('evidence.page_title', lab=rec.get('lab'), student=rec.get('student'))}</h1>",
        '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta) + "</table>",
        *[_check(c, lang) for c in rec.get("checks") or []],
        f'<p class="note">{t("evidence.verify_hint")}</p>',
        f'<script type="application/json" id="{EMBED_ID}">{embedded}</script>',
        "</body></html>", ""])


def embedded(data: bytes) -> bytes | None:
    """The signed evidence JSON inside an evidence page, or None when ``data`` is not one."""
    m = _EMBED.search(data)
    return m.group(1) if m else None
