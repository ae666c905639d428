"""Where the browser tests find Chromium, the flags they start it with and where their screenshots go."""

from __future__ import annotations

import os
import shutil

from tests.support import ROOT

CHROMIUM = os.environ.get("XAAS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "build" / "ui-screenshots"
# Flags for a closed network and a container: no sandbox (root), no GPU, none of Chromium's background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-default-apps", "--disable-extensions"]


def browser_skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (a dev dependency) is not installed"
    if not CHROMIUM:
        return "no Chromium binary (Debian: apt-get install chromium; or set XAAS_CHROMIUM)"
    return None
