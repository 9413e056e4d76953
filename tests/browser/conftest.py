"""Fixtures shared by the browser tests."""

from __future__ import annotations

import pytest

from tests.browser.chromium import Chromium


@pytest.fixture
def browser():
    """One headless Chromium per test (tests/browser/chromium.py), closed afterwards."""
    b = Chromium()
    try:
        yield b
    finally:
        b.close()
