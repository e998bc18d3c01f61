"""Loads a page in headless Chromium and returns the DOM after its scripts ran: how the report tests
check that the offline HTML report draws its charts in a real browser."""

from __future__ import annotations

import subprocess
from pathlib import Path


def dump_dom(browser: str, page: Path, profile: Path) -> subprocess.CompletedProcess[str]:
    """Chromium's `--dump-dom` of `page` with a throw-away `profile` folder (stdout: the DOM, stderr: its log)."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
