"""Render a run's report.html in headless Chromium (no network) and check what a reader would see.

    python scripts/report_screenshot.py runs/latest                 # writes runs/latest/report.png
    python scripts/report_screenshot.py runs/latest/report.html --out /tmp/report.png

Needs a Chromium binary (`apt-get install chromium`; not part of the set-up: the tests do not need it).
The page is loaded from a file with every network request refused (proxy to a closed port, host
resolution off). Checks on the screenshot, each printed, exit 1 if one fails: the image is not blank,
and the colours of the charts are on it: the budget line on the size chart (#1a7f37) and the first
learning curve (#1f77b4).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"budget line (size chart)": (0x1A, 0x7F, 0x37), "first learning curve": (0x1F, 0x77, 0xB4)}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("Error: no Chromium found; install it with: apt-get install chromium")


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 3000) -> None:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--no-first-run",
            "--disable-extensions",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            page.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"Error: chromium failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")


def pixels_near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> int:
    return int((np.abs(pixels.astype(np.int16) - np.array(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="a run directory or its report.html")
    ap.add_argument("--out", type=Path, help="PNG to write (default: report.png beside the report)")
    args = ap.parse_args()
    page = args.report / "report.html" if args.report.is_dir() else args.report
    if not page.is_file():
        sys.exit(f"Error: {page} not found; run 'prokt-deploy bench' first")
    out = args.out or page.with_suffix(".png")
    screenshot(page, out)
    img = Image.open(out).convert("RGB")
    pixels = np.asarray(img)  # (H, W, 3)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    checks = [("not blank", colours > 50, f"{colours} distinct colours")]
    for name, rgb in COLOURS.items():
        n = pixels_near(pixels, rgb)
        checks.append((name, n > 20, f"{n} pixels"))
    for name, ok, detail in checks:
        print(f"[{'pass' if ok else 'FAIL'}] {name}: {detail}")
    print(f"wrote {out} ({img.width}x{img.height})")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
