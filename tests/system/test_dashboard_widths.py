"""The round-3 dashboard in a real browser (Debian's chromium, headless, through its chromedriver),
against the real bin/dashboard: every page fits a phone (390 px) and a desktop (1,280 px) without
scrolling sideways, a viewer cannot act, an operator's requeue names them in the audit trail, and
hostile names and contents stay text on every new page and in the SVG charts.
"""

from __future__ import annotations

import base64
import subprocess

import pytest

from conftest import BIN
from test_dashboard import BAD_NAME, HOSTILE_NAME, PASSWORD, route_everything
from test_dashboard_browser import CHROMEDRIVER, CHROMIUM, browser, page_says, problems_in_console, serve, text_of  # noqa: F401
from test_dashboard_pages import HOSTILE_CLIENT, HOSTILE_CONTENT

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")

WIDTHS = (390, 1280)
LONG_NAME = "Campaign_" + "VeryLongFileNameWithoutAnyBreak" * 4 + "_final-v2.json"


@pytest.fixture
def site(tree, db):
    """Jobs of every kind the new pages show: routed, failed (hostile), waiting on a destination,
    a long name, a hostile client folder; two users; the real bin/dashboard serving them."""
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n'
                      f'users_file = "users"\n[[expect]]\nclients = ["QUIET"]\nwithin = 60\n',
                      router="create_folders = false")
    (tree.root / "dest" / "CLIENT-STORES" / "LOREAL" / "IN").mkdir(parents=True)
    tree.drop("RANK", HOSTILE_NAME)                           # waits: Monday Rank's folder is missing
    tree.drop("LOREAL", LONG_NAME)
    tree.drop("LOREAL", BAD_NAME, "{not json")
    tree.drop(HOSTILE_CLIENT, "hostile.json", HOSTILE_CONTENT)
    route_everything(tree, db)
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        subprocess.run([str(BIN / "dashboard-user"), "add", name, "--role", role, "--password-stdin"],
                       input=PASSWORD + "\n", cwd=tree.root, env=tree.env(), check=True, capture_output=True, text=True,
                       timeout=60)
    proc, url = serve(tree)
    ids = dict((name, i) for i, name in db.run_sql("SELECT id, file_name FROM jobs"))
    yield url, ids
    proc.terminate()
    proc.wait(timeout=15)


def log_in(driver, user: str) -> None:
    """The browser's basic-auth prompt cannot be answered headless: the header goes with every request."""
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def as_wide(driver, width: int) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 844 if width < 600 else 900, "deviceScaleFactor": 1,
                            "mobile": width < 600})


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_is_wider_than_the_window(browser, site, width):  # noqa: F811
    url, ids = site
    as_wide(browser, width)
    pages = ["/", "/jobs", "/failed", "/waiting", "/destinations", "/clients", "/jobs?q=Campaign", "/jobs?state=held"]
    pages += [f"/jobs/{i}" for i in ids.values()]
    for path in pages:
        browser.get(url + path)
        inner, scroll = browser.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        assert inner == width, (path, inner)
        assert scroll <= inner, f"{path} is {scroll} px wide in a {inner} px window"
    assert problems_in_console(browser) == []


def test_a_viewer_is_refused_and_an_operator_requeue_names_them_in_the_audit_trail(browser, site, db):  # noqa: F811
    from selenium.webdriver.common.by import By

    url, ids = site
    job_id = ids[BAD_NAME]
    log_in(browser, "vera")
    browser.get(f"{url}/jobs/{job_id}")
    assert "vera (viewer)" in text_of(browser, "header")
    browser.find_element(By.CSS_SELECTOR, "form.action button").click()
    page_says(browser, "main", "vera is a viewer")
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"

    log_in(browser, "otto")
    browser.get(f"{url}/jobs/{job_id}")
    browser.find_element(By.CSS_SELECTOR, "form.action button").click()
    page_says(browser, "h1", "Requeue: preview")
    browser.find_element(By.ID, "confirm").click()
    page_says(browser, "h1", "Requeued")
    actor = db.run_sql("SELECT actor FROM job_events WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)).fetchone()[0]
    assert actor.startswith("dashboard@") and actor.endswith(":otto")


def test_hostile_names_and_contents_stay_text_on_the_new_pages_and_in_the_charts(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    url, ids = site
    failed = ids["hostile.json"]
    for path in ("/", "/destinations", "/clients", "/waiting", f"/jobs/{failed}", f"/jobs/{ids[HOSTILE_NAME]}"):
        browser.get(url + path)
        assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img, main b, svg script, [onmouseover]"), path
    browser.get(url + "/clients")
    assert HOSTILE_CLIENT in browser.find_element(By.TAG_NAME, "main").text
    browser.get(f"{url}/jobs/{failed}")
    assert "<script>alert(1)</script>" in browser.find_element(By.CSS_SELECTOR, "pre.content").text
    browser.get(url + "/waiting")
    assert HOSTILE_NAME in browser.find_element(By.TAG_NAME, "main").text
    browser.get(url + "/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 4
    assert problems_in_console(browser) == []


def fits(driver) -> None:
    """The page shown is not wider than its window."""
    inner, scroll = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert scroll <= inner, f"{driver.current_url} is {scroll} px wide in a {inner} px window"


def test_on_a_phone_an_operator_pauses_and_resumes_a_destination_and_dismisses_after_a_preview(browser, site, db):  # noqa: F811
    from selenium.webdriver.common.by import By

    url, ids = site
    log_in(browser, "otto")
    as_wide(browser, 390)
    browser.get(url + "/destinations")
    assert browser.find_elements(By.CSS_SELECTOR, "form.steer button.pause")
    fits(browser)
    form = browser.find_element(By.CSS_SELECTOR, "form.steer")
    name = form.find_element(By.CSS_SELECTOR, "input[name=name]").get_attribute("value")
    form.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("printer jam")
    form.find_element(By.CSS_SELECTOR, "button.pause").click()
    page_says(browser, "h1", "Paused")
    fits(browser)
    browser.find_element(By.LINK_TEXT, "back").click()
    page_says(browser, "main", "printer jam")
    fits(browser)
    browser.find_element(By.CSS_SELECTOR, "form.steer button.resume").click()
    page_says(browser, "h1", "Resumed")
    trail = db.run_sql("SELECT actor, action, target FROM steering_events ORDER BY id").fetchall()
    assert [(a, t) for _, a, t in trail] == [("pause", f"destination {name}"), ("resume", f"destination {name}")]
    assert all(actor.startswith("dashboard@") and actor.endswith(":otto") for actor, _, _ in trail)

    browser.get(url + "/failed")
    fits(browser)
    form = browser.find_element(By.CSS_SELECTOR, "form[action='/dismiss']")
    form.find_element(By.CSS_SELECTOR, "button").click()
    page_says(browser, "#refused", "--reason is required")          # one line, nothing changed
    fits(browser)
    browser.get(url + "/failed")
    form = browser.find_element(By.CSS_SELECTOR, "form[action='/dismiss']")
    form.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("sender resent them")
    form.find_element(By.CSS_SELECTOR, "button").click()
    page_says(browser, "h1", "Dismiss: preview")
    fits(browser)
    failed = ids[BAD_NAME]
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (failed,)).fetchone()[0] == "failed"
    browser.find_element(By.ID, "confirm").click()
    page_says(browser, "h1", "Dismissed")
    actor, detail = db.run_sql("SELECT actor, detail FROM job_events WHERE job_id = ? ORDER BY id DESC LIMIT 1",
                               (failed,)).fetchone()
    assert actor.endswith(":otto") and detail.endswith(": sender resent them")
    refusal = "/dismiss - Failed to load resource: the server responded with a status of 400"     # said above, on purpose
    assert [p for p in problems_in_console(browser) if refusal not in p] == []
