"""The review page's browser tests share one way to launch Debian's Chromium (modules skip first where it is absent)."""

from __future__ import annotations

import pytest

from tests.ui.browser_support import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
