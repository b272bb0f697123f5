"""Open a grid report in headless Chromium, save a screenshot, and check its images.

    python benchmarks/report_screenshot.py registry/reports/grid/index.html shot.png

Prints JSON: the images the page references, how many exist on disk and decode as images,
and where the screenshot went (Debian's `chromium` package; look at the PNG yourself).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1200,1600"]  # fmt: skip


def main() -> None:
    page, shot = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    sources = re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))
    readable = 0
    for source in sources:
        try:
            with Image.open(page.parent / source) as image:
                image.verify()
            readable += 1
        except (OSError, SyntaxError):
            pass
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    result = {"page": str(page), "images": len(sources), "readable": readable,
              "screenshot": str(shot), "screenshot_bytes": shot.stat().st_size}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
