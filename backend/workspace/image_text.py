"""Image-text training data as people publish it, with its images kept beside it.

Rows: LLaMA-Factory's multimodal ``{"messages": [...], "images": [...]}`` (or its ShareGPT form with
``conversations``), ShareGPT with ``<image>`` markers, XTuner's LLaVA JSON and InternVL's jsonl
(``{"image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}``; ``image``
a path or a list). Image paths are relative to the dataset's own folder (the folder of its JSON file, else
the folder the zip or import brought: InternVL's ``root``) and resolved inside it only (``paths.inside``).
A row is ``(formats.Chat, [image paths])``: its text messages keep one ``<image>`` marker per image where
the image goes (a row with fewer markers than images gets the missing ones at the start of its first user
turn, as LLaVA does); the fine-tune job renders the markers as the model's own image parts.

A dataset with images arrives as a zip (its JSON or JSONL and the images) or as a folder from an import
folder (``WORKBENCH_IMPORT_DIRS``); either becomes ``datasets/<name>/`` and is registered by its data file.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

from backend.access import users
from backend.core import defaults, i18n, paths
from backend.workspace import datasets, formats, models
from backend.core.errors import UserError
from backend.core.registry import Entry
from backend.workspace.rows import DatasetError, iter_records, scan
from backend.workspace.images import MAX_PIXELS, open_image

IMAGE_MARK = "<image>"
IMAGE_FIELDS = ("images", "image")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
IMAGE_MAX_MB = 20                 # one image file; larger ones are named by validation, never trained
IMAGE_PROBLEMS = ("err.it.image_outside", "err.it.image_missing", "err.it.image_big", "err.it.image_unreadable")
ZIP_MAX_FILES = 100_000
DATA_EXT = (".jsonl", ".json")
SAMPLE_ROWS = 200                 # rows looked at to tell an image-text dataset from a text one
# where an image-text model keeps its parts (module names in LLaVA, InternVL, Qwen2-VL, XComposer...)
VISION = ("vision_tower", "vision_model", "visual", "vit", "image_encoder")
PROJECTOR = ("multi_modal_projector", "mm_projector", "mlp1", "merger", "aligner", "connector", "vision_proj")
HEADS = ("lm_head", "output", "embed_out")


def part_of(name: str) -> str:
    """"vision", "projector", "head" or "language" for a module or parameter name of an image-text model."""
    parts = name.split(".")
    if any(p in VISION for p in parts):
        return "vision"
    if any(p in PROJECTOR for p in parts):
        return "projector"
    if parts[-1] in HEADS or (len(parts) > 1 and parts[-2] in HEADS):
        return "head"
    return "language"


def image_tokens(model_path: Path) -> int:
    """Tokens one image takes in the language model (the most: InternVL's tiles counted), from the model's
    config and preprocessor config; 576 (LLaVA-1.5's) when they don't say."""
    import json

    def read(name: str) -> dict:
        try:
            return json.loads((Path(model_path) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    config, pre = read("config.json"), read("preprocessor_config.json")
    if config.get("image_seq_length"):
        per_tile = int(config["image_seq_length"])
    else:
        vision = config.get("vision_config") or {}
        size, patch = vision.get("image_size"), vision.get("patch_size")
        size = size[0] if isinstance(size, list) else size
        patch = patch[0] if isinstance(patch, list) else patch
        if not (size and patch):
            return 576
        per_tile = int((size // patch) ** 2 * float(config.get("downsample_ratio", 1.0)) ** 2)
    tiles = int(pre.get("max_patches", 1)) + (1 if pre.get("crop_to_patches") and pre.get("max_patches", 1) > 1 else 0)
    return per_tile * max(1, tiles)


# -- rows --------------------------------------------------------------------------------------
def image_fields(record: dict) -> list[str]:
    """The image paths a row names (``images`` or ``image``, one path or a list)."""
    for field in IMAGE_FIELDS:
        value = record.get(field)
        if value in (None, "", []):
            continue
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v.strip() for v in items):
            raise UserError("err.it.image_field", field=field)
        return items
    return []


def to_chat(record: dict, fmt: str) -> tuple[formats.Chat, list[str]]:
    """One image-text row as (messages with one ``<image>`` marker per image, image paths). ValueError
    (a UserError) saying what is wrong with it."""
    if not isinstance(record, dict):
        raise UserError("err.rec.not_object", type=type(record).__name__)
    images = image_fields(record)
    chat = datasets.to_messages({k: v for k, v in record.items() if k not in formats.MEDIA_FIELDS}, fmt)
    if any(IMAGE_MARK in m["content"] for m in chat if m["role"] == "assistant"):
        raise UserError("err.it.marker_reply")
    marks = sum(m["content"].count(IMAGE_MARK) for m in chat)
    if marks > len(images):
        raise UserError("err.it.markers", marks=marks, images=len(images))
    if marks < len(images):
        first = next(m for m in chat if m["role"] == "user")
        first["content"] = (IMAGE_MARK + "\n") * (len(images) - marks) + first["content"]
    return chat, images


def resolve_image(roots: list[Path], item: str) -> Path:
    """An image path of a row, relative to the first of ``roots`` that has it and inside that one only;
    UserError if it leaves them or is missing."""
    outside = True
    for root in roots:
        try:
            p = paths.inside(root, item)
        except paths.OutsideError:
            continue
        outside = False
        if p.is_file():
            return p
    raise UserError("err.it.image_outside" if outside else "err.it.image_missing", image=item)


def check_image(p: Path, item: str) -> dict:
    """Width and height of an image file, or UserError naming it (too large, unreadable, not an image)."""
    size = p.stat().st_size
    if size > IMAGE_MAX_MB * 2**20:
        raise UserError("err.it.image_big", image=item, mb=size / 2**20, limit=IMAGE_MAX_MB)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError("err.it.image_unreadable", image=item, error=e.strerror or str(e)) from None
    im = open_image(data, item, MAX_PIXELS)
    return {"width": im.width, "height": im.height, "bytes": size}


def root_of(path: Path) -> list[Path]:
    """The folders a dataset's image paths are relative to: its data file's folder, then the folders above
    it up to the dataset's own folder in ``datasets/`` (InternVL's ``root`` beside its annotation folder)."""
    roots = [Path(path).resolve().parent]
    if roots[0].name == "datasets":         # a file loose in datasets/: no folder of its own, so no images
        return []
    while len(roots) < 4 and roots[-1].parent.name != "datasets":
        roots.append(roots[-1].parent)
    return roots


def has_images(path: str | Path) -> bool:
    """Whether the first rows of a dataset name images (an image-text dataset)."""
    for i, (_, rec, err) in enumerate(scan(Path(path))):
        if i >= SAMPLE_ROWS:
            break
        if err is None and isinstance(rec, dict) and any(rec.get(f) for f in IMAGE_FIELDS):
            return True
    return False


def load_rows(path: str | Path, limit: int | None = None, check: bool = True) -> list[tuple[formats.Chat, list[Path]]]:
    """Every row of an image-text dataset as (messages, image files); DatasetError naming the first bad row
    (its text, or an image missing, outside the folder, too large or not an image when ``check``)."""
    path = Path(path)
    fmt, root, out = datasets.detect_format(path), root_of(path), []
    if fmt not in datasets.TRAIN_FORMATS:
        raise DatasetError("err.ds.no_train_format", name=path.name, formats=", ".join(datasets.TRAIN_FORMATS))
    for n, rec in iter_records(path):
        try:
            chat, items = to_chat(rec, fmt)
            files = [resolve_image(root, i) for i in items]
            if check:
                for f, i in zip(files, items):
                    check_image(f, i)
        except ValueError as e:
            raise DatasetError("err.ds.bad_line", name=path.name, line=n, reason=UserError.of(e)) from None
        out.append((chat, files))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DatasetError("err.ds.no_records", name=path.name)
    return out


def validate(path: str | Path, lang: str = "en", max_errors: int = 1000) -> dict:
    """``datasets.validate``'s report for any dataset; for an image-text one each row is checked with its
    images, and every row whose image is missing, outside the folder, unreadable, not an image or too large
    is named with the image."""
    path = Path(path)
    if not has_images(path):
        return datasets.validate(path, lang=lang, max_errors=max_errors)
    fmt, root = datasets.detect_format(path), root_of(path)
    rows = bad = images = 0
    errors, reasons = [], Counter()
    for n, rec, err in scan(path):
        if err is not None:
            bad += 1
            reasons["unreadable"] += 1
            if len(errors) < max_errors:
                errors.append({"line": n, "reason": err.text(lang)})
            continue
        rows += 1
        try:
            chat, items = to_chat(rec, fmt)
            for item in items:
                check_image(resolve_image(root, item), item)
            images += len(items)
        except ValueError as e:
            bad += 1
            kind = "image" if getattr(e, "key", "") in IMAGE_PROBLEMS or getattr(e, "key", "").startswith("err.vlm.") \
                else "bad_record"
            reasons[kind] += 1
            if len(errors) < max_errors:
                errors.append({"line": n, "reason": UserError("err.ds.bad_record", line=n, reason=UserError.of(e)).text(lang)})
    if not rows and not bad:
        bad, errors = 1, [{"line": 0, "reason": UserError("err.ds.holds_none", name=path.name).text(lang)}]
    good = rows - reasons["image"] - reasons["bad_record"]
    summary = i18n.t("it.summary", lang, good=good, bad=bad, images=images)
    return {"ok": bad == 0 and rows > 0, "format": fmt, "rows": rows, "good": good, "bad": bad, "images": images,
            "errors": errors, "truncated": bad > len(errors), "formats": {fmt: rows}, "reasons": dict(reasons),
            "summary": summary}


def stats(path: str | Path, limit: int = 0) -> dict:
    """Images per row and their sizes: {"rows", "images", "per_row": {n: rows}, "bytes", "width"/"height":
    [min, max], "bad"} (rows whose images can't be read count in ``bad``)."""
    path = Path(path)
    fmt, root = datasets.detect_format(path), root_of(path)
    per_row, total, widths, heights, bad, rows = Counter(), 0, [], [], 0, 0
    for n, rec in iter_records(path, skip_bad=True):
        rows += 1
        try:
            _, items = to_chat(rec, fmt)
            sizes = [check_image(resolve_image(root, i), i) for i in items]
        except ValueError:
            bad += 1
            continue
        per_row[len(items)] += 1
        total += sum(s["bytes"] for s in sizes)
        widths += [s["width"] for s in sizes]
        heights += [s["height"] for s in sizes]
        if limit and rows >= limit:
            break
    span = lambda xs: [min(xs), max(xs)] if xs else [0, 0]    # noqa: E731
    return {"rows": rows, "images": sum(k * v for k, v in per_row.items()), "per_row": dict(sorted(per_row.items())),
            "bytes": total, "width": span(widths), "height": span(heights), "bad": bad}


def thumbnails(path: str | Path, record: dict) -> list[Path]:
    """The image files a row names that exist inside its dataset's folder (for the viewer)."""
    try:
        items = image_fields(record)
    except ValueError:
        return []
    out = []
    for item in items:
        try:
            out.append(resolve_image(root_of(Path(path)), item))
        except ValueError:
            pass
    return out


# -- bringing one in: a zip, or a folder from an import folder --------------------------------
def _data_file(folder: Path) -> Path:
    """The data file of a dataset folder: an InternVL meta file's annotation, else the shallowest JSON / JSONL
    whose rows name images, else the shallowest one (LLaMA-Factory's dataset_info.json is never the data)."""
    found = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_EXT
                    and p.name != "dataset_info.json"
                    and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts)),
                   key=lambda p: (len(p.relative_to(folder).parts), p.name))
    if not found:
        raise DatasetError("err.it.no_data_file")
    for p in found:
        meta = _internvl_meta(p)
        if meta:
            try:
                ann = paths.inside(folder, p.parent / meta["annotation"])
            except paths.OutsideError:
                continue
            if ann.is_file():
                return ann
    return next((p for p in found if has_images(p)), found[0])


def _internvl_meta(p: Path) -> dict | None:
    import json
    if p.suffix.lower() != ".json" or p.stat().st_size > 1 << 20:
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    if isinstance(data, dict) and len(data) == 1:
        (entry,) = data.values()
        if isinstance(entry, dict) and isinstance(entry.get("annotation"), str):
            return entry
    return None


def _new_folder(stem: str, home: Path) -> tuple[str, Path]:
    name = datasets.safe_name(stem)
    if datasets.unique_name(name, home) != name or (datasets.datasets_dir(home) / name).exists():
        raise DatasetError("err.ds.exists_upload", name=name)
    return name, datasets.datasets_dir(home) / name


def _finish(tmp: Path, name: str, target: Path, source: str, home: Path, owner: str) -> Entry:
    data = _data_file(tmp)
    rel = data.relative_to(tmp)
    os.replace(tmp, target)             # the name was free a moment ago; a race leaves the tmp folder's error
    entry = datasets.register(target / rel, name, source, home, owner=owner, images=stats(target / rel)["images"],
                              folder=str(target))
    return entry


def save_zip(filename: str, data, home: Path, *, owner: str) -> Entry:
    """A zip of a dataset file and its images → ``datasets/<name>/``, registered as ``owner``'s. Refused: a
    member that leaves the folder (``..``, an absolute path, a link), more than ZIP_MAX_FILES members,
    more than UPLOAD_MAX_MB unpacked, no JSON / JSONL inside."""
    name, target = _new_folder(Path(filename).stem, home)
    limit = defaults.setting("UPLOAD_MAX_MB") * 2**20
    raw = data if isinstance(data, (bytes, bytearray)) else data.read(limit + 1)
    if len(raw) > limit:
        raise DatasetError("err.ds.over_limit", name=filename, limit=limit // 2**20)
    try:
        z = zipfile.ZipFile(io.BytesIO(raw))
        infos = z.infolist()
    except zipfile.BadZipFile:
        raise DatasetError("err.it.bad_zip", name=filename) from None
    size = sum(i.file_size for i in infos)
    if len(infos) > ZIP_MAX_FILES or size > limit:
        raise DatasetError("err.it.zip_big", name=filename, n=len(infos), mb=size / 2**20, limit=limit // 2**20)
    users.check_disk(owner, size, datasets.DatasetRefused, home)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".unzip", dir=target.parent))
    try:
        for info in infos:
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            try:
                dest = paths.inside(tmp, info.filename)
            except paths.OutsideError:
                dest = None
            if dest is None or is_link:
                raise DatasetError("err.it.zip_member", name=filename, member=info.filename)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        return _finish(tmp, name, target, "upload", home, owner)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def import_folder(src: str | Path, name: str | None, home: Path, *, owner: str) -> Entry:
    """Copy a dataset folder (its JSON / JSONL and images) from an import folder (WORKBENCH_IMPORT_DIRS) into
    ``datasets/<name>/``; links are not followed (a link in it is skipped)."""
    dirs = models.import_dirs()
    try:
        if not dirs:
            raise paths.OutsideError("err.it.import_outside", path=str(src), dirs="-")
        folder = paths.inside(dirs, src, must_exist=True)
    except paths.OutsideError:
        raise DatasetError("err.it.import_outside", path=str(src), dirs=defaults.setting("IMPORT_DIRS") or "-") from None
    if not folder.is_dir():
        raise DatasetError("err.it.import_outside", path=str(src), dirs=defaults.setting("IMPORT_DIRS") or "-")
    name, target = _new_folder(name or folder.name, home)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    users.check_disk(owner, size, datasets.DatasetRefused, home)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".import", dir=target.parent))
    try:
        shutil.copytree(folder, tmp, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if (Path(d) / n).is_symlink()])
        return _finish(tmp, name, target, "import", home, owner)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
