#!/usr/bin/env python3
"""Look at a profile report as a user would: render report.html in headless Chromium, save a PNG.

    python tools/render_report.py reports/mnist_cnn_hisd/report.html results/report_screenshot.png
    python tools/render_report.py reports/mnist_cnn_hisd/report.html out.png --width 1280 --height 4000

The page is self-contained (inline CSS, plots as data: URIs), so Chromium needs no network. The
screenshot is the page's top ``--height`` pixels at ``--width`` (a tall window shows the whole
report). Needs the ``chromium`` binary (Debian: ``apt-get install chromium``); says so in one line
when it is missing. Rendering happens in a throw-away profile directory.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "headless_shell")


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("render_report: no Chromium found (apt-get install chromium); nothing rendered")


def render(html_path: Path, png_path: Path, width: int = 1200, height: int = 3000, timeout_s: float = 120.0) -> Path:
    """Screenshot ``html_path`` into ``png_path`` with headless Chromium; returns the PNG path."""
    html_path = html_path.resolve()
    if not html_path.is_file():
        raise SystemExit(f"render_report: {html_path}: no such report; run hisd-edge profile (or demo) first")
    png_path = png_path.resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hisd-render-") as profile_dir:
        command = [
            find_browser(),
            "--headless",
            "--no-sandbox",  # containers and CI run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not png_path.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"render_report: chromium failed ({done.returncode}): {last}")
    return png_path


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="report.html written by hisd-edge profile, report or demo")
    parser.add_argument("png", type=Path, help="where to save the screenshot")
    parser.add_argument("--width", type=int, default=1200, help="window width in pixels (default 1200)")
    parser.add_argument("--height", type=int, default=3000, help="window height in pixels (default 3000)")
    args = parser.parse_args(argv)
    out = render(args.html, args.png, args.width, args.height)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
