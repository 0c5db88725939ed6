"""The real bin/dashboard in a real browser: Debian's chromium, headless, through its chromedriver.

Nothing downloads a browser: Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver,
which .ci/run installs. Where they are missing the tests skip and say so.
"""

from __future__ import annotations

import base64
import shutil
import urllib.request

import pytest

from conftest import wait_for
from test_dashboard import BAD_NAME, HOSTILE_NAME, HOSTILE_TITLE, PASSWORD, filled  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1300,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(tree, filled):  # noqa: F811 (the fixture imported above)
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    proc, url = serve(tree, DASHBOARD_PASSWORD=PASSWORD)
    yield url
    proc.terminate()
    proc.wait(timeout=15)


def serve(tree, **env):
    """The real bin/dashboard of ``tree``, started and answering: its process and its URL."""
    proc = tree.spawn("dashboard", **env)
    url = f"http://127.0.0.1:{tree.dashboard_port}"

    def answers() -> bool:
        try:
            return urllib.request.urlopen(url + "/metrics", timeout=1).status == 200
        except OSError:
            return False
    wait_for(answers, timeout=30, message="bin/dashboard answering")
    return proc, url


def text_of(driver, css: str) -> str | None:
    """The text of the first element ``css`` selects; None while the page is missing or being replaced."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def page_says(driver, css: str, words: str) -> None:
    """Wait until the page (after a click, say) shows ``words`` in ``css``."""
    wait_for(lambda: words in (text_of(driver, css) or ""), timeout=20, message=f"{words!r} in {css}")


def problems_in_console(driver) -> list[str]:
    """Console errors and warnings, CSP violations among them (chromium logs those as errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def test_the_pages_render_escaped_with_no_console_or_csp_error(browser, dashboard, filled):  # noqa: F811
    from selenium.webdriver.common.by import By

    for path in ["/", "/jobs", "/failed", "/waiting"] + [f"/jobs/{i}" for i in filled.values()]:
        browser.get(dashboard + path)
        assert "hot-folder pipeline" in browser.title, path
        assert browser.find_elements(By.TAG_NAME, "table"), path
    browser.get(f"{dashboard}/jobs/{filled[HOSTILE_NAME]}")
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert HOSTILE_NAME in heading                                  # shown as text, never as markup
    assert HOSTILE_TITLE in browser.find_element(By.CSS_SELECTOR, "table.facts").text
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script, main svg[onload]")
    assert problems_in_console(browser) == []


def test_the_overview_refreshes_itself(browser, dashboard):
    def stamp() -> str | None:
        return text_of(browser, ".verdict p")          # "as of <time> UTC ..."

    browser.get(dashboard + "/")
    first = stamp()
    assert first and "as of" in first
    wait_for(lambda: stamp() not in (None, first), timeout=20, interval=0.5,
             message="the overview to reload by itself")
    assert problems_in_console(browser) == []


def test_a_requeue_clicked_through_in_the_browser_is_in_the_audit_trail(browser, dashboard, db, filled):  # noqa: F811
    from selenium.webdriver.common.by import By

    # The browser's basic-auth prompt cannot be answered headless: the header is set for every request.
    token = base64.b64encode(f"carol:{PASSWORD}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    job_id = filled[BAD_NAME]
    browser.get(f"{dashboard}/jobs/{job_id}")
    browser.find_element(By.CSS_SELECTOR, "form.action button").click()
    page_says(browser, "h1", "Requeue: preview")
    assert "would go back to detected" in text_of(browser, "pre")
    browser.find_element(By.ID, "confirm").click()
    page_says(browser, "h1", "Requeued")
    assert "went back to detected" in text_of(browser, "pre")
    actor, detail = db.run_sql("SELECT actor, detail FROM job_events WHERE job_id = ? ORDER BY id DESC LIMIT 1",
                                   (job_id,)).fetchone()
    assert actor.startswith("dashboard@") and actor.endswith(":carol") and "requeued" in detail
    browser.get(f"{dashboard}/jobs/{job_id}")
    page_says(browser, "table.events", "carol")
    assert problems_in_console(browser) == []
