"""The inspection page's History view driven in a real headless Chromium (Selenium).

The real server (uvicorn on 127.0.0.1) serves the tiny detector with an SQLite history whose
alert rule fires on any predicted area. It is seeded over HTTP with photos of two parts, some
with a black square the detector outlines; the browser then pages through the inspections,
draws one part's trend, acknowledges its alert and uploads a photo with a part id, and the
database is checked for each. Skipped where selenium, chromium or chromedriver is missing.
"""

import datetime as dt
import io
import re

import httpx
import numpy as np
import pytest
from headless import page_errors, wait_for  # skips this module where there is no headless Chromium
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from pitscope.data.synthetic import render_surface
from pitscope.growth import AlertRule
from pitscope.history.recorder import Recorder
from pitscope.history.store import HistoryStore
from pitscope.inference import Detector
from pitscope.serve import create_app, serve_in_thread

KEY = "history-key"
PAGE_SIZE = 20  # rows per page of the History table (app.js)
START = dt.datetime(2020, 8, 28, 10, tzinfo=dt.UTC)


def photo(seed: int, square: int = 0) -> bytes:
    """A 64 x 64 synthetic surface as PNG, with a black square of side `square` px (the tiny
    detector outlines it as a defect region) when square > 0."""
    image = render_surface(np.random.default_rng(seed), 64, 64).copy()  # (64, 64, 3) uint8
    if square:
        image[20 : 20 + square, 20 : 20 + square] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory, fit_tiny_detector):
    return fit_tiny_detector(tmp_path_factory.mktemp("page_history"))[1]


@pytest.fixture
def history_service(model, tmp_path):
    """(base URL, store): the served tiny detector, an API key, an SQLite history alerting on any area."""
    detector = Detector.load(model)
    store = HistoryStore(tmp_path / "history.sqlite")
    recorder = Recorder(store, detector, "tiny", rule=AlertRule(0.0, None))
    url, stop = serve_in_thread(create_app(detector, api_key=KEY, recorder=recorder))
    yield url, store
    stop()


def seed(url: str) -> list[dict]:
    """Part roll-A: two clean photos then two with a growing square; roll-B: 18 clean photos,
    captured an hour apart. Returns the answers."""
    uploads = [("roll-A", photo(i, square)) for i, square in enumerate((0, 0, 8, 16))]
    uploads += [("roll-B", photo(10 + i)) for i in range(18)]
    answers = []
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        for hour, (part, data) in enumerate(uploads):
            captured = (START + dt.timedelta(hours=hour)).isoformat()
            response = client.post(
                "/predict",
                params={"part": part, "captured_at": captured},
                files={"file": (f"{part}-{hour:02d}.png", data, "image/png")},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
    assert all(a["recorded"] for a in answers)
    return answers


def read(driver, selector: str, attribute: str | None = None) -> list[str]:
    """The text (or an attribute) of every element `selector` finds, read in one go: the page
    redraws its tables whole on each refresh, so elements found earlier may be gone."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent)",
        selector,
        attribute,
    )


def row_ids(driver) -> list[int]:
    return [int(i) for i in read(driver, "#inspections-table tbody tr", "data-id")]


def click(driver, selector: str) -> None:
    """Click the element `selector` finds, again if a redraw replaced it meanwhile."""

    def clicked(d):
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except StaleElementReferenceException:
            return False

    wait_for(driver, clicked, f"a click on {selector}")


def sign_in(driver, url: str) -> None:
    """Open the page, give the API key at its prompt and wait until it shows the model."""
    driver.get(url + "/")
    key_input = wait_for(
        driver,
        lambda d: d.find_element(By.ID, "api-key").is_displayed() and d.find_element(By.ID, "api-key"),
        "the API key prompt",
    )
    key_input.send_keys(KEY + Keys.ENTER)
    wait_for(driver, lambda d: d.find_element(By.ID, "service-status").text.startswith("Connected"), "the model")


def open_alert_text(n: int) -> str:
    return f"{n} open alert{'' if n == 1 else 's'}"


def test_history_table_trend_acknowledge_and_upload_with_a_part(history_service, browser, tmp_path):
    url, store = history_service
    answers = seed(url)
    raised = [alert for a in answers[:4] for alert in a["alerts"]]
    assert answers[3]["defect_px"] > 0 and raised, "the black square should raise an area alert on roll-A"

    sign_in(browser, url)
    badge = browser.find_element(By.ID, "alert-badge")
    open_alerts = len(store.alerts(unacknowledged=True))
    wait_for(browser, lambda d: badge.text == open_alert_text(open_alerts), "the open-alert badge")
    assert not browser.find_element(By.ID, "inspections-table").is_displayed()  # closed until asked

    # the table: every recorded inspection, newest first, a page at a time
    browser.find_element(By.ID, "history-toggle").click()
    total = store.count()
    wait_for(browser, lambda d: len(row_ids(d)) == PAGE_SIZE, "the first page")
    first_page = row_ids(browser)
    assert browser.find_element(By.ID, "page-text").text == f"1–{PAGE_SIZE} of {total}"
    assert not browser.find_element(By.ID, "page-prev").is_enabled()
    click(browser, "#page-next")
    wait_for(browser, lambda d: len(row_ids(d)) == total - PAGE_SIZE, "the second page")
    assert first_page + row_ids(browser) == [r["id"] for r in store.inspections(limit=None)]
    assert not browser.find_element(By.ID, "page-next").is_enabled()
    newest = store.inspections(limit=1)[0]
    click(browser, "#page-prev")
    wait_for(browser, lambda d: row_ids(d)[:1] == [newest["id"]], "the first page again")
    cells = read(browser, "#inspections-table tbody tr:first-child td")
    assert cells[2:4] == [newest["part"], newest["name"]]
    assert cells[6] == ("DEFECT" if newest["is_defective"] else "OK")

    Select(browser.find_element(By.ID, "decision-filter")).select_by_value("defective")
    defective = [r["id"] for r in store.inspections(limit=PAGE_SIZE, decision="defective")]
    wait_for(browser, lambda d: row_ids(d) == defective, "the defective inspections")
    assert set(read(browser, "#inspections-table tbody td:nth-child(7)")) <= {"DEFECT"}
    Select(browser.find_element(By.ID, "decision-filter")).select_by_value("")

    # the parts and roll-A's trend: one point per inspection, its alert ringed, limit lines drawn
    assert read(browser, "#parts-table tbody tr", "data-part") == ["roll-A", "roll-B"]
    click(browser, '#parts-table tr[data-part="roll-A"] button')
    points = wait_for(browser, lambda d: read(d, "#trend-chart svg g.inspection-point", "data-id"), "the trend chart")
    trend = store.trend("roll-A")
    assert len(points) == len(trend) == 4
    assert [int(i) for i in points] == [p["id"] for p in trend]
    alerts = store.alerts(part="roll-A")
    alerted = {a["inspection_id"] for a in alerts}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trend-chart .alert-mark")) == len(alerted) >= 1
    assert browser.find_elements(By.CSS_SELECTOR, "#trend-chart path.threshold-line")
    assert browser.find_elements(By.CSS_SELECTOR, "#trend-chart line.limit-line")
    assert "Part roll-A: 4 inspections" in browser.find_element(By.ID, "trend-title").text

    # acknowledge roll-A's open alert in the browser; the database says who
    buttons = browser.find_elements(By.CSS_SELECTOR, "#trend-alerts button.ack")
    unacknowledged = [a for a in alerts if a["acknowledged_at"] is None]
    assert len(buttons) == len(unacknowledged) >= 1
    browser.find_element(By.ID, "ack-by").send_keys("ana")
    target = int(buttons[0].find_element(By.XPATH, "..").get_attribute("data-id"))
    buttons[0].click()
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trend-alerts button.ack")) == len(unacknowledged) - 1,
        "the acknowledgement",
    )
    acknowledged = {a["id"]: a for a in store.alerts(part="roll-A")}[target]
    assert acknowledged["acknowledged_at"] is not None and acknowledged["acknowledged_by"].endswith("(ana)")
    item = browser.find_element(By.CSS_SELECTOR, f'#trend-alerts li[data-id="{target}"]')
    assert "Acknowledged" in item.text and "(ana)" in item.text
    wait_for(
        browser,
        lambda d: badge.text == open_alert_text(open_alerts - 1) or not badge.is_displayed(),
        "the badge to count one alert fewer",
    )

    # an upload from the page carries the part and source=page, and says what was recorded
    upload = tmp_path / "from_the_page.png"
    upload.write_bytes(photo(99))
    browser.find_element(By.ID, "part-input").send_keys("roll-C")
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    line = wait_for(
        browser,
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#results .card .recorded") if e.text],
        "the recorded line",
    )[0]
    match = re.match(r"recorded #(\d+), part roll-C", line.text)
    assert match, line.text
    row = store.inspections(source="page")
    assert [(r["id"], r["part"], r["name"]) for r in row] == [(int(match[1]), "roll-C", "from_the_page.png")]
    wait_for(browser, lambda d: row_ids(d)[:1] == [row[0]["id"]], "the table to show the upload")
    wait_for(browser, lambda d: len(read(d, "#parts-table tbody tr")) == 3, "the new part")
    assert page_errors(browser) == []


def test_a_service_without_history_says_so_and_shows_nothing_else(model, browser):
    url, stop = serve_in_thread(create_app(Detector.load(model)))
    try:
        browser.get(url + "/")
        wait_for(
            browser,
            lambda d: "keeps no history: start it with --db" in d.find_element(By.ID, "history-status").text,
            "the no-history message",
        )
        for element in ("history-toggle", "history-body", "alert-badge", "part-row"):
            assert not browser.find_element(By.ID, element).is_displayed(), element
        assert page_errors(browser) == []
    finally:
        stop()


def test_the_trend_draws_the_median_the_rule_watches(model, browser, tmp_path):
    """A rule watching the median of the last 2 inspections: the chart draws that line beside the
    predicted area, one vertex per inspection at the store's value, and the alert says what it read."""
    detector = Detector.load(model)
    store = HistoryStore(tmp_path / "history.sqlite")
    recorder = Recorder(store, detector, "tiny", rule=AlertRule(0.0, None, smooth_images=2))
    url, stop = serve_in_thread(create_app(detector, api_key=KEY, recorder=recorder))
    try:
        seed(url)
        trend = store.trend("roll-A", smooth=2)
        assert any(p["watched_fraction"] != p["defect_fraction"] for p in trend)  # the median moves the line
        sign_in(browser, url)
        browser.find_element(By.ID, "history-toggle").click()
        wait_for(browser, lambda d: read(d, "#parts-table tbody tr", "data-part") == ["roll-A", "roll-B"], "the parts")
        click(browser, '#parts-table tr[data-part="roll-A"] button')
        line = wait_for(browser, lambda d: read(d, "#trend-chart polyline.series.watched", "points"), "the median line")
        area = read(browser, "#trend-chart polyline.series.area", "points")
        vertices = [tuple(map(float, v.split(","))) for v in line[0].split()]
        assert len(vertices) == len(trend) == 4
        assert line != area
        # the y of each vertex follows the watched area: equal areas at equal heights, larger ones higher
        for (_, y_a), (_, y_b), a, b in zip(vertices, vertices[1:], trend, trend[1:]):
            if a["watched_fraction"] == b["watched_fraction"]:
                assert y_a == pytest.approx(y_b)
            else:
                assert (y_b < y_a) == (b["watched_fraction"] > a["watched_fraction"])
        assert "median of the last 2 inspections" in " ".join(read(browser, "#trend-chart text"))
        alert_texts = " ".join(read(browser, "#trend-alerts li"))
        assert store.alerts(part="roll-A") and "the median of the last 2 predicted areas" in alert_texts
        assert page_errors(browser) == []
    finally:
        stop()
