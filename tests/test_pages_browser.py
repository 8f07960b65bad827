"""Every page renders in both languages, with no error box and no raw string key left on it."""
import re

import pytest

from backend.workspace import models
from backend.core.i18n import STRINGS
from tests.conftest import shot

PAGES = ["", "jobs", "datasets", "models", "finetune", "evaluate", "knowledge", "chat", "deploy", "xcomposer"]
RAW_KEY = re.compile(r"\b(?:" + "|".join(sorted({k.split(".")[0] for k in STRINGS})) + r")\.[a-z_]+\.[a-z_.]+\b")


@pytest.mark.browser
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_page_renders_in_both_languages(page, home, tiny_model, lang):
    models.register("tiny", tiny_model, "import", home=home, owner="local")          # pages with a model to offer
    for name in PAGES:
        page.goto(f"{page.base_url}/{name}?lang={lang}")
        title = STRINGS["app.title" if not name else f"nav.{name}"][lang]
        page.locator("h1").get_by_text(title).first.wait_for()
        path = shot(page, f"page-{name or 'home'}-{lang}")
        assert page.locator('[data-testid="stException"]').count() == 0, f"{name} ({lang}) shows an error: {path}"
        text = page.locator("section.stMain, [data-testid='stMain'], [data-testid='stAppViewContainer']").first.inner_text()
        assert not RAW_KEY.findall(text), f"{name} ({lang}) shows raw string keys {RAW_KEY.findall(text)}"
