"""Compose: an illustrated article written by an image-text endpoint, step by step.

InternLM-XComposer's compose demo writes an article, decides where images go, captions each place,
fetches candidate images from an online search service and lets the user choose. Here the candidates
are the user's own: the workspace gallery (``<home>/gallery``, uploads land in ``gallery/uploads``; in class
mode a student's land in ``gallery/users/<name>``, seen only by them and the instructors).
Each gallery image is captioned once by the endpoint (cached by content hash) and the candidates for
a place are ranked by how close their caption is to the place's caption (character-bigram cosine, so
Chinese and English both work without an embedding model).

A draft is one JSON file in ``<home>/compose``, saved after every step, so a reload or another
browser loses nothing. The model is asked through ``backend.pipeline.vlm.stream``; the prompts and the
parsing of its answers live here, the page only renders. No streamlit here.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
import time
import zipfile
from collections import Counter
from pathlib import Path

from backend.access import users
from backend.core import defaults, paths
from backend.core.errors import UserError
from backend.pipeline.vlm import check_image, stream

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
EDITS = ("rewrite", "expand", "shorten")
CAPTION_PROMPT = "Describe this image in one short sentence."


class ComposeError(UserError):
    """Bad input in a compose step, with a message (a key and fields) for the user."""


class ComposeRefused(ComposeError, users.Refused):
    """Another student's draft (recorded in the audit log)."""


# -- the gallery --------------------------------------------------------------------------------
def image_owner(path: Path, home: Path) -> str:
    """The student whose gallery folder (paths.user_gallery) holds ``path`` (resolved), else '' (the class's)."""
    folders = paths.user_gallery("", home=home).resolve()
    return path.relative_to(folders).parts[0] if folders in path.parents and path.parent != folders else ""


def may_use_image(path: Path, by, home: Path) -> bool:
    """A student (class mode) uses gallery images only: the class's and their own; others use any."""
    user = users.acting(by, home=home)
    if user.instructor or users.mode() == "none":
        return True
    return paths.is_inside(path, paths.gallery_dir(home).resolve()) and users.may_use(image_owner(path, home), by, home=home)


def gallery(home: Path, by: users.Actor) -> list[str]:
    """Workspace-relative paths of the gallery images ``by`` may use, sorted (a student: the class's and
    their own; an instructor or the operator: all)."""
    root = home
    folder = paths.gallery_dir(root)
    return sorted(str(p.relative_to(root)) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file() and may_use_image(p.resolve(), by, root)
                  ) if folder.is_dir() else []


def add_to_gallery(name: str, data: bytes, home: Path, *, owner: str) -> str:
    """Check an uploaded image and keep it (named by its content, so a second upload of the same image is the
    same file) in gallery/uploads, or for a student in class mode in their own gallery/users/<owner>; its
    workspace-relative path. VLMError/ComposeError if refused."""
    root = home
    limit_mb = defaults.setting("UPLOAD_MAX_MB")
    if len(data) > limit_mb * 2**20:
        raise ComposeError("err.ds.too_big", name=name, mb=len(data) / 2**20, limit=limit_mb)
    check_image(data, name)
    ext = Path(name).suffix.lower() if Path(name).suffix.lower() in IMAGE_EXTS else ".png"
    mine = users.mode() != "none" and owner != users.OPERATOR_NAME and not users.is_instructor(owner, home=home)
    if mine:
        users.check_disk(owner, len(data), ComposeRefused, root)
    folder = paths.user_gallery(owner, home=root) if mine else paths.gallery_dir(root) / "uploads"
    target = folder / (hashlib.sha256(data).hexdigest()[:16] + ext)
    if not target.exists():
        paths.atomic_write(target, data)
    return str(target.relative_to(root))


def resolve(rel: str, home: Path, by: users.Actor) -> Path:
    """A gallery path from a draft or a request, refused when it leaves the workspace, or (audited) when
    ``by`` is a student and it is not a gallery image of the class's or theirs."""
    try:
        p = paths.inside(home, rel)
    except paths.OutsideError:
        p = None
    if p is None or not p.is_file():
        raise ComposeError("err.compose.not_image", path=rel)
    if not may_use_image(p, by, home):
        users.refuse(by, "see", f"image {rel}", ComposeRefused("err.compose.image_not_yours", path=rel), home=home)
    return p


# -- captions and ranking -------------------------------------------------------------------------
def _captions_file(home: Path | None) -> Path:
    return paths.gallery_dir(home) / ".captions.json"


def captions(home: Path) -> dict:
    """{content hash: caption} of every image the endpoint has captioned so far."""
    try:
        return json.loads(_captions_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def image_key(rel: str, home: Path) -> str:
    return hashlib.sha256(resolve(rel, home, by=users.OPERATOR).read_bytes()).hexdigest()[:16]


def gallery_captions(home: Path, by: users.Actor) -> dict[str, str | None]:
    """{gallery path ``by`` may use: its caption, or None when not captioned yet}, reading the cache once."""
    cache = captions(home)
    return {p: cache.get(image_key(p, home)) for p in gallery(home, by)}


def caption(endpoint: dict, rel: str, home: Path, by: users.Actor, max_new_tokens: int = 48) -> str:
    """The endpoint's one-sentence caption of a gallery image (asked once, then cached)."""
    key, cache = image_key(rel, home), captions(home)
    if key not in cache:
        cache[key] = "".join(ask(endpoint, CAPTION_PROMPT, [resolve(rel, home, by=by)], max_new_tokens=max_new_tokens,
                                        by=by, home=home)).strip()
        paths.atomic_write(_captions_file(home), json.dumps(cache, ensure_ascii=False, indent=1).encode())
    return cache[key]


def _bigrams(text: str) -> Counter:
    s = re.sub(r"[\W_]+", " ", text.lower()).strip()
    return Counter(s[i:i + 2] for i in range(len(s) - 1) if " " not in s[i:i + 2]) + \
        Counter(w for w in s.split() if len(w) > 1)


def similarity(a: str, b: str) -> float:
    """Cosine similarity of character bigrams and words, 0..1."""
    x, y = _bigrams(a), _bigrams(b)
    dot = sum(x[k] * y[k] for k in x.keys() & y.keys())
    norm = math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))
    return dot / norm if norm else 0.0


def rank(slot_caption: str, candidates: dict[str, str]) -> list[tuple[str, float]]:
    """Candidates ({path: caption}) best first as (path, score); ties keep the gallery order."""
    scored = [(p, similarity(slot_caption, c or "")) for p, c in candidates.items()]
    return sorted(scored, key=lambda x: -x[1])


# -- prompts and the parsing of answers -----------------------------------------------------------
def article_prompt(instruction: str) -> str:
    if not instruction.strip():
        raise ComposeError("err.compose.no_instruction")
    return (f"{instruction.strip()}\n\nWrite the article in plain paragraphs separated by blank lines. "
            "Do not add image links.")


def paragraphs(text: str) -> list[str]:
    """The article's paragraphs: blank-line separated blocks (single lines when there are no blank lines)."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    if len(blocks) == 1 and "\n" in blocks[0]:
        blocks = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    return blocks


def slots_prompt(paras: list[str], n: int) -> str:
    numbered = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(paras, 1))
    return (f"Here is an article with numbered paragraphs.\n\n{numbered}\n\n"
            f"Choose up to {n} paragraphs that an image should follow, and write a short caption of the image "
            "that fits there. Answer with one line per image, exactly like:\n1: a caption\n3: another caption")


def parse_slots(answer: str, paras: list[str], n: int) -> list[dict]:
    """Places from the model's answer (``<paragraph>: <caption>`` lines, any of : . ) - ：as separator).
    When the answer has no usable line (a small model rambles), places are spread evenly and captioned
    with their paragraph's first sentence; ``by`` says which of the two it was."""
    found: dict[int, str] = {}
    for line in answer.splitlines():
        m = re.match(r"^\s*(?:paragraph|段落|第)?\s*\[?(\d{1,3})\]?\s*段?\s*[:.)\-：、]\s*(.+?)\s*$", line, re.I)
        if m and 1 <= int(m[1]) <= len(paras) and int(m[1]) - 1 not in found and m[2].strip():
            found[int(m[1]) - 1] = m[2].strip()[:200]
        if len(found) == n:
            break
    if found:
        return [{"after": i, "caption": c, "by": "model", "image": None, "ranked": []} for i, c in sorted(found.items())]
    n = max(1, min(n, len(paras)))
    step = len(paras) / n
    out = []
    for k in range(n):
        i = min(len(paras) - 1, int(k * step))
        first = re.split(r"(?<=[.!?。！？])\s*", paras[i])[0][:120]
        out.append({"after": i, "caption": first, "by": "workbench", "image": None, "ranked": []})
    return out


def edit_prompt(action: str, paragraph: str, context: str) -> str:
    how = {"rewrite": "Rewrite this paragraph with the same meaning and length, in better words.",
           "expand": "Expand this paragraph to about twice its length with concrete details.",
           "shorten": "Shorten this paragraph to about half its length, keeping the key point."}
    if action not in how:
        raise ComposeError("err.compose.edit", action=action, edits=", ".join(EDITS))
    return (f"The article so far:\n{context[:4000]}\n\n{how[action]} Answer with the new paragraph only.\n\n"
            f"Paragraph:\n{paragraph}")


def ask(endpoint: dict, prompt: str, images: list | None = None, *, by: users.Actor, home: Path, **sampling):
    """Stream one single-turn request (text deltas) as ``by``; VLMError on failure."""
    return stream(endpoint, [{"role": "user", "content": prompt, "images": list(images or [])}], by=by, home=home,
                  **sampling)


# -- drafts ------------------------------------------------------------------------------------------
def drafts_dir(home: Path) -> Path:
    return home / "compose"


def new_draft(instruction: str, images: list[str], *, owner: str) -> dict:
    article_prompt(instruction)
    now = time.time()
    return {"id": time.strftime("%Y%m%d-%H%M%S") + f"-{int(now * 1000) % 1000:03d}", "owner": owner,
            "instruction": instruction.strip(), "images": images, "paragraphs": [], "slots": [],
            "created": now, "updated": now}


def save(draft: dict, home: Path, by: users.Actor) -> None:
    """Write a draft; only its owner or an instructor may (a student reads an instructor's, never changes it)."""
    if not users.may_manage(draft.get("owner", ""), by, home=home):
        users.refuse(by, "save", f"draft {draft['id']}", ComposeRefused("err.users.draft_not_yours", id=draft["id"]), home=home)
    draft["updated"] = time.time()
    paths.atomic_write(drafts_dir(home) / f"{draft['id']}.json", json.dumps(draft, ensure_ascii=False, indent=1).encode())


def drafts(home: Path, owner: str | None = None, *, by: users.Actor) -> list[dict]:
    """Saved drafts, newest first: only ``owner``'s when given; only those ``by`` may see (a student: their
    own and the instructors')."""
    out = []
    for f in drafts_dir(home).glob("*.json"):
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (owner is None or d.get("owner", "") == owner) and users.may_use(d.get("owner", ""), by, home=home):
            out.append(d)
    return sorted(out, key=lambda d: -d.get("updated", 0))


def draft(draft_id: str, home: Path, by: users.Actor) -> dict:
    """One saved draft (``?draft=`` in a link); KeyError when there is none, refused (audited) when it is
    another student's."""
    path = drafts_dir(home) / f"{draft_id}.json"
    if not re.fullmatch(r"[\w-]{1,64}", draft_id or "") or not path.is_file():
        raise KeyError(f"no draft {draft_id!r}")
    d = json.loads(path.read_text(encoding="utf-8"))
    if not users.may_use(d.get("owner", ""), by, home=home):
        users.refuse(by, "see", f"draft {draft_id}", ComposeRefused("err.users.draft_not_yours", id=draft_id), home=home)
    return d


def caption_gallery(endpoint: dict | None, home: Path, on_caption=None, *, by: users.Actor) -> None:
    """Caption every gallery image ``by`` may use not captioned yet; ``on_caption(done, total)`` reports progress."""
    todo = [p for p, c in gallery_captions(home, by).items() if c is None]
    if todo and endpoint is None:
        raise ComposeError("err.compose.no_model")
    for k, p in enumerate(todo, 1):
        caption(endpoint, p, home, by)
        if on_caption:
            on_caption(k, len(todo))


def rerank(draft: dict, home: Path, by: users.Actor) -> None:
    """Rank the gallery images ``by`` may use for every place by the captions known so far, and suggest the
    best match where the user has not chosen an image."""
    known = {p: c or "" for p, c in gallery_captions(home, by).items()}
    for slot in draft["slots"]:
        slot["ranked"] = [[p, round(s, 3)] for p, s in rank(slot["caption"], known)]
        if not slot.get("chosen") and slot["ranked"]:
            slot["image"] = slot["ranked"][0][0]


# -- export -------------------------------------------------------------------------------------------
def _blocks(draft: dict):
    """(paragraph, image-or-None, caption) in article order."""
    by_after = {s["after"]: s for s in draft["slots"]}
    for i, p in enumerate(draft["paragraphs"]):
        s = by_after.get(i)
        yield p, (s or {}).get("image"), (s or {}).get("caption", "")


def export_markdown(draft: dict, home: Path, by: users.Actor) -> bytes:
    """A zip: article.md with relative image links and the images beside it in images/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        lines = []
        for n, (para, image, cap) in enumerate(_blocks(draft), 1):
            lines.append(para)
            if image:
                src = resolve(image, home, by)
                name = f"images/{n:02d}-{src.name}"
                z.write(src, name)
                lines.append(f"![{cap.replace(']', ')')}]({name})")
        z.writestr("article.md", "\n\n".join(lines) + "\n")
    return buf.getvalue()


def export_html(draft: dict, home: Path, by: users.Actor) -> str:
    """One self-contained HTML file (images embedded as data URIs; the model's text escaped)."""
    mime = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".webp": "webp", ".bmp": "bmp"}
    body = []
    for para, image, cap in _blocks(draft):
        heading = re.match(r"^(#{1,3})\s+(.*)$", para)
        if heading:
            body.append(f"<h{len(heading[1])}>{html.escape(heading[2])}</h{len(heading[1])}>")
        else:
            body.append("<p>" + html.escape(para).replace("\n", "<br>") + "</p>")
        if image:
            src = resolve(image, home, by)
            data = base64.b64encode(src.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/{mime.get(src.suffix.lower(), "png")};base64,{data}" '
                        f'alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>')
    title = html.escape(draft.get("instruction", "")[:80])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title>"
            "<style>body{max-width:42em;margin:2em auto;font:17px/1.6 sans-serif}img{max-width:100%}"
            "figcaption{color:#666;font-size:.9em}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

