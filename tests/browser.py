"""Open geomsteer's self-contained HTML outputs in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Visit:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # anything but the file itself
    tooltip: str = ""
    screenshot: Path | None = None


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, ("the browser tests need Debian's chromium: make test installs it (apt-get install chromium); "
                  "by hand: apt-get install -y chromium")
    return path


def visit(page_path: Path, shots: Path, hover: str, tooltip: str | None = None) -> Visit:
    """Load ``page_path``, record console errors and every request but the page's own, hover the first
    element matching ``hover`` and read the tooltip: the text of ``tooltip`` (a selector) once visible, or
    else the hovered element's SVG ``<title>`` or title attribute; save a screenshot in ``shots``."""
    from playwright.sync_api import sync_playwright

    v = Visit()
    url = Path(page_path).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: v.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: v.console_errors.append(str(e)))
            page.on("request", lambda r: v.requests.append(r.url) if r.url != url else None)
            page.goto(url, wait_until="load")
            target = page.locator(hover).first
            target.hover()
            if tooltip:
                tip = page.locator(tooltip)
                tip.wait_for(state="visible", timeout=3000)
                v.tooltip = tip.inner_text()
            else:
                v.tooltip = target.evaluate(
                    "e => (e.querySelector('title') || {}).textContent || e.getAttribute('title') || ''")
            shots.mkdir(parents=True, exist_ok=True)
            v.screenshot = shots / (Path(page_path).stem + ".png")
            page.screenshot(path=str(v.screenshot), full_page=True)
        finally:
            browser.close()
    return v
