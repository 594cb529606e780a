"""The web demo in a real browser: the API and the page both running, headless Chromium (Debian's, through
Playwright) uploads an image, and the verdict on screen must be the API's answer for the same file.
Screenshots at laptop and phone widths go to ``reports/ui/``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from genart.bench.harness import free_port
from genart.ui import streamlit_command
from genart.ui.present import fmt_p
from tests.conftest import image_bytes
from tests.ui.conftest import LiveApi

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]

# An empty GENART_CHROMIUM counts as unset: Playwright given "" looks for a browser download of its own.
CHROMIUM = os.environ.get("GENART_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("GENART_SCREENSHOTS", Path(__file__).resolve().parents[2] / "reports" / "ui"))
WIDTHS = {1280: 900, 390: 844}  # a laptop and a phone (CSS pixels); full-page shots grow past the height


@pytest.fixture(scope="module")
def ui(live_api: LiveApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page served by `streamlit run`, exactly as `genart ui` starts it, pointed at the live API."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "streamlit.log"
    env = {**os.environ, "GENART_API_URL": live_api.url, "GENART_API_KEY": live_api.key}
    with log.open("w") as out:
        proc = subprocess.Popen(streamlit_command(port), env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"streamlit exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"streamlit did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium: Playwright's own browser download is not reachable from here, and not needed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make install` installs it (or `apt-get install -y chromium`, or "
            "point GENART_CHROMIUM at one); deselect the browser tests with -m 'not browser'",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _classify_in_page(browser: Any, ui: str, image: Path, width: int) -> tuple[str, str, Any]:
    """Open the page at ``width``, upload ``image``, and read the verdict it shows: (label, P(ai), page)."""
    page = browser.new_page(viewport={"width": width, "height": WIDTHS[width]})
    page.set_default_timeout(90_000)
    page.goto(ui)
    page.get_by_text("Is this image AI-generated?").wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(image))
    verdict = page.locator('[data-testid="genart-verdict"]')
    verdict.wait_for()
    page.locator(".ga-bars").wait_for()
    page.get_by_role("button", name="This was wrong").wait_for()
    page.wait_for_timeout(500)  # let the image preview and fonts settle before the screenshot
    label = verdict.locator(".ga-label").inner_text().strip()
    shown = verdict.locator(".ga-probability").inner_text().strip()
    return label, shown, page


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_browser_shows_the_apis_verdict_for_an_uploaded_image(
    browser: Any, ui: str, live_api: LiveApi, tmp_path: Path, width: int
) -> None:
    image = tmp_path / "sample.png"
    image.write_bytes(image_bytes((320, 240), seed=42))
    label, shown, page = _classify_in_page(browser, ui, image, width)
    with live_api.client() as client:
        answer = client.predict_bytes(image.read_bytes(), image.name)
    assert (label, shown) == (answer["label"], fmt_p(answer["probability"]))
    assert re.fullmatch(r"\d\.\d{3}", shown)

    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at {width} px"
    # Streamlit scrolls inside its main block, not the document: grow the viewport to the content instead.
    height = page.evaluate(
        "() => { const main = document.querySelector('[data-testid=\"stMain\"]');"
        " return Math.max(main ? main.scrollHeight : 0, document.documentElement.scrollHeight); }"
    )
    page.set_viewport_size({"width": width, "height": max(int(height), WIDTHS[width])})
    page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollTo(0, 0)")
    page.wait_for_timeout(500)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"screenshot-{width}.png"), full_page=True)
    page.close()
