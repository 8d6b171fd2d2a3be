"""A study as a person sees it in the MLflow UI: headless Chromium opens the parent run, its heatmap and its report
page, checks what a reader would check, and saves a screenshot of each under ``<study>/screenshots``.

The browser is the system's Chromium (Debian's ``chromium``; ``SELFD_CHROMIUM`` names another binary), driven
by Playwright; nothing is downloaded. The MLflow UI polls, so pages are awaited by their content, never by
network idleness.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

from study.report_page import SECTIONS
from trainables.errors import ConfigError

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # no calls out of a closed network
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    path = os.environ.get("SELFD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise ConfigError("no Chromium to take screenshots with: install Debian's `chromium` "
                          "(make install does) or set SELFD_CHROMIUM to a Chromium binary")
    return path


def photograph(server: str, tracking, children: list[str], heatmap: str | None, out: Path,
               credentials: tuple[str, str] | None = None, report_file: Path | None = None) -> dict:
    """Open the parent run, the heatmap artifact ``heatmap`` and the report page on ``server``; save
    ``out/{run,heatmap,report}.png`` (and the whole ``report_file`` as ``report_page.png``) and return what each
    page showed."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    run_url = tracking.run_url(server)
    seen = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, http_credentials=(
                {"username": credentials[0], "password": credentials[1]} if credentials else None))
            context.set_default_timeout(TIMEOUT_MS)
            # a fresh page per view: the UI is a single-page app that does not always follow a changed #fragment
            page = context.new_page()
            page.goto(run_url)
            page.get_by_text("Child runs", exact=True).wait_for()
            _close_assistant(page)
            seen["run"] = {"title": page.title(), "child_runs": _list_child_runs(page, children)}
            page.screenshot(path=out / "run.png")

            if heatmap:
                page = context.new_page()
                page.goto(f"{run_url}/artifacts/{heatmap}")
                image = page.locator("img[src^='blob:']").first
                image.wait_for()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
                _close_assistant(page)
                size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
                seen["heatmap"] = {"natural_size": size, "colors": _colors(image.screenshot())}
                page.screenshot(path=out / "heatmap.png")

            page = context.new_page()
            page.goto(f"{run_url}/artifacts/report/index.html")
            report = page.frame_locator("iframe.mlflow-html-iframe")
            report.locator("h1").wait_for()
            _close_assistant(page)
            seen["report"] = {"title": report.locator("h1").inner_text(), "sections": [
                report.locator(f"section#{key} h2").inner_text() for key in SECTIONS
                if report.locator(f"section#{key} h2").count()],
                "images": report.locator("img").count()}
            page.screenshot(path=out / "report.png")
            if report_file is not None:  # the whole page, as it reads opened from the study folder
                page = context.new_page()
                page.goto(report_file.resolve().as_uri())
                page.screenshot(path=out / "report_page.png", full_page=True)
        finally:
            browser.close()
    return seen


def _list_child_runs(page, children: list[str]) -> list[str]:
    """The nested runs the parent run's page links to, after pressing "Load more" as a reader would (the page
    lists them ten at a time) until all of ``children`` show or nothing more loads."""
    def listed() -> list[str]:
        return [name for name in children if page.get_by_role("link", name=name, exact=True).count()]

    load_more = page.get_by_role("button", name="Load more", exact=True)
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    shown = listed()
    while len(shown) < len(children) and time.monotonic() < deadline:
        if load_more.count() and load_more.first.is_enabled():
            load_more.first.click()
        page.wait_for_timeout(500)  # the next page of runs, or the first one, is fetched by the UI
        shown = listed()
    return shown


def _close_assistant(page) -> None:
    """The 3.x UI opens an assistant panel beside the run; it hides part of the run in a screenshot."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()
        close.first.wait_for(state="detached")


def _colors(png: bytes) -> int:
    """Distinct colours in a screenshot: a blank or broken image has one or two, a rendered heatmap hundreds."""
    import numpy as np
    from PIL import Image

    return len(np.unique(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3), axis=0))
