"""Screenshots of what a person sees: Dagster UI pages and HTML reports, rendered by headless Chromium.

Usage: python scripts/screenshot.py OUT_DIR URL [URL ...]
Each URL becomes OUT_DIR/<n>-<slug>.png. Dagster's first-visit community dialog is skipped before the shot.
Needs Debian's chromium (apt-get install chromium) and the `playwright` package (the `ui` extra).
"""

import re
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main(out_dir: str, urls: list[str]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for number, url in enumerate(urls, start=1):
            page.goto(url, wait_until="networkidle", timeout=60_000)
            skip = page.get_by_role("button", name="Skip")
            if skip.count():
                skip.first.click()
            page.wait_for_timeout(2_500)
            slug = re.sub(r"[^a-z0-9]+", "-", url.split("://", 1)[-1].lower()).strip("-")[-60:]
            path = out / f"{number:02d}-{slug}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
