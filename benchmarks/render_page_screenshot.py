"""Screenshot the inspection page with a model, after uploading a few photos, for docs/.

    python benchmarks/render_page_screenshot.py runs/localisation/cpu_seed0/model.pt docs/web_page.png \\
        PHOTO [PHOTO ...]

Serves MODEL on a free port of 127.0.0.1 (uvicorn in a thread), opens the page in headless
Chromium (Selenium and the distribution's chromedriver), uploads the photos, waits for every
verdict, and saves a palette PNG of the page scaled to --width so that it stays small enough to
commit.
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

from pitscope.inference import Detector
from pitscope.serve import create_app, serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--window", default="1280,1000", help="browser window in CSS pixels, W,H")
    parser.add_argument("--width", type=int, default=900, help="width of the saved picture")
    parser.add_argument("--colours", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        raise SystemExit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    base, stop = serve_in_thread(create_app(Detector.load(args.model)))
    try:
        with tempfile.TemporaryDirectory() as profile:
            options = webdriver.ChromeOptions()
            options.binary_location = browser
            for flag in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                f"--window-size={args.window}",
                f"--user-data-dir={profile}",
            ):
                options.add_argument(flag)
            driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
            try:
                driver.get(base + "/")
                driver.find_element(By.ID, "file-input").send_keys("\n".join(str(p.resolve()) for p in args.photos))
                deadline = time.monotonic() + args.timeout
                while len(
                    [
                        c
                        for c in driver.find_elements(By.CSS_SELECTOR, "#results .card")
                        if "pending" not in c.get_attribute("class")
                    ]
                ) < len(args.photos):
                    if time.monotonic() > deadline:
                        raise SystemExit("timed out waiting for the verdicts")
                    time.sleep(0.5)
                time.sleep(1)
                height = driver.execute_script("return document.body.scrollHeight")
                width = int(args.window.split(",")[0])
                driver.set_window_size(width, min(int(height) + 40, 2400))
                picture = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
                for card in driver.find_elements(By.CSS_SELECTOR, "#results .card"):
                    print(
                        card.find_element(By.CSS_SELECTOR, ".name").text,
                        "|",
                        card.find_element(By.CSS_SELECTOR, ".verdict").text,
                        "|",
                        card.find_element(By.CSS_SELECTOR, ".region").text,
                    )
            finally:
                driver.quit()
    finally:
        stop()
    scale = args.width / picture.width
    picture = picture.resize((args.width, round(picture.height * scale)), Image.LANCZOS)
    picture.quantize(colors=args.colours).save(args.png, optimize=True)
    print(f"{args.png}: {args.png.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
