"""Render a pitscope report in headless Chromium and save a small screenshot of its top part.

    python benchmarks/render_report_screenshot.py runs/cpu_seed0/report/report.html docs/report_bsdata.png

Needs a Chromium (Debian: `apt-get install chromium`). The browser runs with networking
features off and a throw-away profile; the report needs no network anyway. The screenshot is
cropped to --height pixels of page, scaled to --width and reduced to a palette of --colours
colours so that it stays small enough to commit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def render(report: Path, png: Path, window: tuple[int, int]) -> None:
    """Screenshot `report` at window (width, height) CSS pixels into `png` with headless Chromium."""
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        raise SystemExit(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={window[0]},{window[1]}",
                report.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html written by `pitscope report`")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--window", type=int, default=1280, help="browser window width in CSS pixels")
    parser.add_argument("--height", type=int, default=2400, help="page height to keep, in CSS pixels")
    parser.add_argument("--width", type=int, default=1000, help="width of the saved PNG")
    parser.add_argument("--colours", type=int, default=256, help="palette size of the saved PNG")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        render(args.report, raw, (args.window, args.height))
        shot = Image.open(raw).convert("RGB")
    shot = shot.crop((0, 0, shot.width, min(shot.height, args.height)))
    shot = shot.resize((args.width, round(shot.height * args.width / shot.width)), Image.Resampling.LANCZOS)
    shot = shot.quantize(colors=args.colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot.save(args.out, optimize=True)
    print(f"wrote {args.out} ({shot.width}x{shot.height}, {args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
