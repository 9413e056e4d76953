"""Fixtures of the connectivity tests (issue #18): the browser tests' headless Chromium."""

from tests.browser.conftest import browser  # noqa: F401  (a fixture)
