"""A headless Chromium for the page tests (tests/serve/test_page_e2e.py, tests/history/test_page_history.py).

Importing it skips the importing test module, with the reason, where selenium, chromium or
chromedriver is missing (`make test` installs them where it can). The `browser` fixture of
tests/conftest.py starts one with `start_chromium`.
"""

import shutil
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).exists()), None
)
if BROWSER is None or DRIVER is None:
    pytest.skip(
        f"no headless browser: chromium {'found' if BROWSER else 'missing'}, chromedriver "
        f"{'found' if DRIVER else 'missing'} (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )


def start_chromium(profile: Path):
    """A headless Chromium under chromedriver, its profile in `profile`, its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


def wait_for(driver, condition, what: str, timeout: float = 30):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        pytest.fail(f"timed out waiting for {what}; page says: {driver.find_element(By.TAG_NAME, 'main').text}")


def page_errors(driver) -> list[str]:
    """Console errors other than the failed requests the test makes on purpose (415)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
