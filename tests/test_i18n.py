"""Every user-facing string exists in both languages, with the same placeholders, and every key the
pages use is in the table."""
import re
import string
from pathlib import Path

from backend.i18n import LANGS, STRINGS

ROOT = Path(__file__).resolve().parent.parent


def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_every_key_has_every_language_with_the_same_placeholders():
    for key, entry in STRINGS.items():
        assert set(entry) == set(LANGS), key
        assert all(entry[lang].strip() for lang in LANGS), key
        assert fields(entry["en"]) == fields(entry["zh"]), key


def test_every_key_used_by_the_ui_exists():
    used = set()
    for path in [ROOT / "app.py", *(ROOT / "pages").glob("*.py")]:
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.]*[a-z0-9_])["']\s*[,)]""", path.read_text(encoding="utf-8")))
    missing = sorted(k for k in used if k not in STRINGS)
    assert not missing, f"keys used but not in backend/i18n.py: {missing}"
