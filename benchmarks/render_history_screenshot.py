"""Screenshot the inspection page's History view on a history database, for docs/.

    python benchmarks/render_history_screenshot.py MODEL DB docs/history_page.png --part 332500_225

Serves MODEL with the history DB (a copy: the page writes nothing here, but the service records
the model's load) on a free port of 127.0.0.1, opens the page in headless Chromium, shows the
history, picks --part, and saves a palette PNG of the History section scaled to --width.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By

from pitscope.history.recorder import Recorder
from pitscope.history.store import HistoryStore
from pitscope.inference import Detector
from pitscope.serve import create_app, serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("db", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--part", required=True)
    parser.add_argument("--window", default="1280,3200", help="browser window in CSS pixels, W,H")
    parser.add_argument("--width", type=int, default=900, help="width of the saved picture")
    parser.add_argument("--colours", type=int, default=96)
    args = parser.parse_args()
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        raise SystemExit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory() as work:
        db = Path(work) / args.db.name
        shutil.copy(args.db, db)
        detector = Detector.load(args.model)
        app = create_app(detector, recorder=Recorder(HistoryStore(db), detector, args.model.parent.name))
        base, stop = serve_in_thread(app)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--window-size={args.window}",
            f"--user-data-dir={Path(work) / 'profile'}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        try:
            driver.get(base + "/")
            deadline = time.monotonic() + 30
            while not driver.find_element(By.ID, "history-toggle").is_displayed():
                if time.monotonic() > deadline:
                    raise SystemExit("the page shows no history")
                time.sleep(0.2)
            driver.find_element(By.ID, "history-toggle").click()
            while not any(args.part in b.text for b in driver.find_elements(By.CSS_SELECTOR, "#parts-table button")):
                if time.monotonic() > deadline:
                    raise SystemExit(f"part {args.part} is not listed")
                time.sleep(0.2)
            next(b for b in driver.find_elements(By.CSS_SELECTOR, "#parts-table button") if args.part in b.text).click()
            time.sleep(2)
            panel = driver.find_element(By.ID, "history-panel")
            driver.execute_script("arguments[0].scrollIntoView()", panel)
            picture = Image.open(io.BytesIO(panel.screenshot_as_png)).convert("RGB")
        finally:
            driver.quit()
            stop()
    scale = args.width / picture.width
    picture = picture.resize((args.width, round(picture.height * scale)), Image.LANCZOS)
    picture.quantize(colors=args.colours).save(args.png, optimize=True)
    print(f"{args.png}: {args.png.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
