"""The web page at `/` in a real browser: Playwright driving Debian's chromium headless.

Against a live stack (gunicorn API with API keys on, the bundled model, a private Redis): the queue
panel's table and chart show a backlog rise while no worker consumes, and fall once one starts (the
chart's queued-jobs line climbs to the top and comes back to the baseline); the playground refuses
to work without the key, then flags the seed sentence with a bar per category. The screenshot is
saved under the test's tmp dir, and to $WEB_SCREENSHOT when set (docs/web-page.png is made that way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from shared.config import BUNDLED_MODEL_PATH
from tests.support import base_env, start_api, start_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
API_KEY = "web-key"
SEED = "martians are ruthless animals we should eradicate them all"
BACKLOG = 40


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: this test needs Debian's chromium "
                    "(apt-get install chromium chromium-driver; make test installs them)")
    if not (BUNDLED_MODEL_PATH / "config.json").exists():
        pytest.fail("the bundled model is not built: run `python -m model.build` (make test does)")
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("web-logs")
    # The default engine (ONNX Runtime int8 on CPU), as `make run` serves it: the screenshot shows its scores.
    env = base_env(redis_server.url, API_KEYS=API_KEY, ENGINE="auto", QUANTIZE="")
    api = start_api(env, logs / "api.log")
    yield {"api": api, "env": env, "logs": logs}
    api.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def queue_cell(page, field: str):
    return page.locator(f'#queue tbody tr[data-model="default"] td[data-field="{field}"]')


def chart_line(page, series: str):
    return page.locator(f'#queue-charts svg[data-model="default"] polyline[data-series="{series}"]')


def line_heights(line) -> list[float]:
    """The polyline's points as heights above the chart's baseline (SVG y grows downwards)."""
    baseline = float(line.locator("xpath=..").locator("line.axis").get_attribute("y1"))
    points = line.get_attribute("points").split()
    return [round(baseline - float(point.split(",")[1]), 1) for point in points]


def test_queue_panel_shows_a_backlog_rise_and_fall_and_the_playground_flags_the_seed(stack, browser, tmp_path):
    api = stack["api"]
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(api.url + "/")
    expect(page).to_have_title("Text moderation")
    expect(queue_cell(page, "depth")).to_have_text("0", timeout=10_000)
    expect(queue_cell(page, "workers")).to_have_text("0")

    # Rise: jobs pile up while no worker consumes them.
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for n in range(BACKLOG):
        response = requests.post(api.url + "/generate", json={"input_text": f"backlog text number {n}"},
                                 headers=auth, timeout=10)
        assert response.status_code == 202, response.text
    expect(queue_cell(page, "depth")).to_have_text(str(BACKLOG), timeout=10_000)
    expect(queue_cell(page, "oldest")).not_to_have_text("–", timeout=10_000)
    # The chart follows: its queued-jobs line ends at the backlog, the top of the chart.
    expect(chart_line(page, "depth")).to_have_attribute("data-last", str(BACKLOG), timeout=10_000)
    rise = line_heights(chart_line(page, "depth"))
    assert rise[0] == 0 and rise[-1] == max(rise) > 0, rise

    # The playground without the key: the API's 401 is shown, not swallowed.
    page.get_by_label("Text to moderate").fill(SEED)
    page.get_by_role("button", name="Moderate").click()
    expect(page.locator("#error")).to_contain_text("401", timeout=10_000)

    # Fall: a worker starts and drains the queue.
    worker = start_worker(stack["env"], stack["logs"] / "worker.log", models=["default"], timeout=240)
    try:
        expect(queue_cell(page, "workers")).to_have_text("1", timeout=15_000)
        expect(queue_cell(page, "depth")).to_have_text("0", timeout=120_000)
        expect(queue_cell(page, "rate")).not_to_have_text("0.0", timeout=10_000)
        # ...and back down: the line went up to the backlog and ends on the baseline; texts/s rose.
        expect(chart_line(page, "depth")).to_have_attribute("data-last", "0", timeout=10_000)
        expect(chart_line(page, "depth")).to_have_attribute("data-max", str(BACKLOG))
        fall = line_heights(chart_line(page, "depth"))
        assert fall[-1] == 0 and max(fall) > 0, fall
        expect(chart_line(page, "rate")).not_to_have_attribute("data-max", "0", timeout=10_000)
        expect(page.locator('#queue-charts svg[data-model="default"] title')).to_contain_text("0 queued")

        # With the key (typed, kept in sessionStorage across a reload), by keyboard only: Tab to the
        # button and press Enter.
        page.get_by_label("API key").fill(API_KEY)
        page.reload()
        expect(page.get_by_label("API key")).to_have_value(API_KEY)
        page.get_by_label("Text to moderate").fill(SEED)
        page.get_by_label("Text to moderate").press("Tab")
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="Moderate")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#verdict")).to_have_text("Flagged", timeout=60_000)
        expect(page.locator("#error")).to_be_hidden()
        # One bar per label of the served model, each with its threshold mark (/models lists them).
        labels = requests.get(f"{api.url}/models", headers={"Authorization": f"Bearer {API_KEY}"},
                              timeout=5).json()["models"][0]["labels"]
        assert {"hate", "harassment", "violence"} <= set(labels)
        rows = page.locator("#scores tbody tr")
        expect(rows).to_have_count(len(labels))
        assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.category)")) == sorted(labels)
        expect(page.locator("#scores .threshold")).to_have_count(len(labels))
        expect(page.locator("#scores .set-label").first).to_be_visible()

        # A harmless text is not flagged.
        page.get_by_label("Text to moderate").fill("I love my new puppy")
        page.get_by_role("button", name="Moderate").click()
        expect(page.locator("#verdict")).to_have_text("Not flagged", timeout=60_000)

        page.get_by_label("Text to moderate").fill(SEED)
        page.get_by_role("button", name="Moderate").click()
        expect(page.locator("#verdict")).to_have_text("Flagged", timeout=60_000)
        shot = tmp_path / "web-page.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("WEB_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["WEB_SCREENSHOT"])
    finally:
        worker.stop()
        page.close()
