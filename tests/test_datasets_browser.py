"""The Datasets page as a person sees it: the bundled assistant set as a paged table and chat bubbles."""
import pytest

from tests.conftest import shot

pytestmark = pytest.mark.browser


def test_open_page_and_read_the_bundled_assistant_set(page, home):
    page.set_viewport_size({"width": 1400, "height": 1900})
    page.goto(f"{page.base_url}/datasets?ds=shubot_self_cognition")
    page.get_by_text("OpenAI messages (role / content)").first.wait_for()
    page.get_by_text("Rows 1–50 of 102").wait_for()
    bubbles = page.locator(".st-key-ds_detail [data-testid='stChatMessage']")
    bubbles.first.wait_for()
    assert bubbles.count() >= 2
    page.locator(".st-key-ds_table canvas").first.wait_for()
    page.wait_for_timeout(500)        # let the grid paint its canvas before the picture
    shot(page, "datasets")
    page.locator(".st-key-ds_next button").click()
    page.get_by_text("Rows 51–100 of 102").wait_for()
    page.locator(".st-key-ds_next button").click()
    page.get_by_text("Rows 101–102 of 102").wait_for()
    page.locator(".st-key-ds_detail").get_by_text("Row 101").wait_for()
    assert page.locator(".st-key-ds_detail [data-testid='stChatMessage']").count() >= 2
    page.get_by_role("tab", name="Validate").click()
    page.get_by_role("button", name="Check every row").click()
    page.get_by_text("102 good rows, 0 problems").wait_for()
    shot(page, "datasets-validated")
