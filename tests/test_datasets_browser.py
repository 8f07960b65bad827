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


def test_a_refusal_reads_in_chinese(page, home, tmp_path):
    """A backend refusal (the second of two uploads under one name) shows in the page's language."""
    files = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        files.append(tmp_path / folder / "mine.jsonl")
        files[-1].write_text(f'{{"text": "hello from {folder}"}}\n', encoding="utf-8")
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(f"{page.base_url}/datasets?lang=zh")
    page.get_by_text("上传文件").first.click()
    page.locator(".st-key-ds_upload input[type=file]").set_input_files([str(f) for f in files])
    page.get_by_role("button", name="保存到工作区").click()
    page.get_by_text("名为 'mine' 的数据集已存在；请重命名文件或删除旧数据集").wait_for()
    assert not page.get_by_text("already exists").count()
    shot(page, "datasets-refusal-zh")


def test_row_problems_read_in_chinese(page, home):
    """A JSONL file whose lines end with ',' (a JSON array cut into lines): the check's summary and each
    row's reason come in the page's language."""
    import json
    from backend.workspace import datasets as ds
    path = ds.datasets_dir(home) / "commas.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "hello"}]}) + ",\n"
                            for i in range(3)), encoding="utf-8")
    ds.register(path, "commas", "upload", home, owner="local")
    page.set_viewport_size({"width": 1400, "height": 1700})
    page.goto(f"{page.base_url}/datasets?ds=commas&lang=zh")
    page.locator(".st-key-ds_detail").get_by_text("第 1 行：JSON 无效").wait_for()       # the row as the view reads it
    page.get_by_role("tab", name="校验").click()
    page.get_by_role("button", name="检查每一行").click()
    page.get_by_text("0 行有效，3 个问题：3 JSON 无效").wait_for()
    assert not page.get_by_text("good rows").count()
    page.locator("[data-testid='stDataFrame'] canvas").nth(1).wait_for()        # the rows table, then the problems
    page.wait_for_timeout(500)        # let the grid paint its canvas before the picture
    shot(page, "datasets-problems-zh")
