"""Real-browser smoke tests of the control room that ``taxi-mlops up`` started in the session
stack: Debian's Chromium through Selenium opens every page, submits the Predict form and
follows its lineage link; no error element and no traceback; a screenshot of each page is
saved under the test's output folder."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.ui import browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def driver():
    d = browser.chromium()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture(scope="module")
def ui(observed_stack):
    url = observed_stack.ui_url
    assert httpx.get(f"{url}/_stcore/health", timeout=5).text == "ok", "taxi-mlops up must start the ui"
    return url


@pytest.mark.parametrize("page", list(browser.PAGES))
def test_every_page_renders_without_errors(driver, ui, shots, page):
    browser.open_page(driver, ui, page)
    path = browser.screenshot(driver, shots, page)
    assert browser.problems(driver) == []
    assert path.stat().st_size > 10_000, "the screenshot is blank"


def test_predict_to_the_data_version_in_two_clicks(driver, ui, observed_stack, shots):
    answer = browser.predict_then_lineage(driver, ui)  # click 1: submit the form
    assert 0.0 <= float(answer["tip probability"]) <= 1.0
    request_id = re.search(r"request_id=([^&]+)", answer["link"]).group(1)
    browser.screenshot(driver, shots, "predict-answer")
    assert browser.problems(driver) == []
    shown = browser.follow_lineage_link(driver)  # click 2: the lineage link
    browser.screenshot(driver, shots, "lineage-of-the-answer")
    assert browser.problems(driver) == []
    lineage = httpx.get(f"{observed_stack.gateway_url}/predictions/{request_id}", timeout=10).json()
    assert shown["data version (DVC)"] == lineage["data"]["dvc_data_version"][:12]
    assert f"request_id={request_id}" in driver.current_url


def test_images_are_served_and_nothing_is_logged_as_a_traceback(ui, observed_stack):
    """Streamlit 1.60's gzip wrapper dropped the response start of PNGs under Starlette 1.10
    (a 500 and a traceback per page load); ``ui/serve.py`` unwraps it."""
    for encoding in ("gzip", "identity"):
        r = httpx.get(f"{ui}/favicon.png", headers={"Accept-Encoding": encoding}, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")
    log = (observed_stack.logs_dir / "ui.log").read_text(errors="replace")
    assert "Traceback" not in log and "Expected ASGI message" not in log
