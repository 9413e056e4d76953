"""Drive a real headless Chromium over the DevTools protocol (tests only).

Chromium comes from Debian's ``chromium`` package (scripts/test.sh installs
it). The flags are the ones ``../shared/GUIDE.md`` section 3 lists; the
DevTools port is read from ``<profile>/DevToolsActivePort``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import websockets

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str | None:
    for path in CHROMIUM_CANDIDATES:
        if os.path.exists(path):
            return path
    return shutil.which("chromium")


class Chromium:
    """A headless Chromium process with one DevTools websocket per page."""

    def __init__(self, extra_flags: tuple[str, ...] = ()):
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("Chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="callsgw-chromium-")
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection", "--ignore-certificate-errors",
            f"--user-data-dir={self.profile}", "--remote-debugging-port=0", *extra_flags,
            "about:blank",
        ]
        self.proc = subprocess.Popen([exe, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    async def new_page(self, *, new_window: bool = False) -> "Page":
        """A new tab (hidden behind the front one, its timers throttled), or with
        ``new_window`` a window of its own, which stays visible."""
        browser_ws = (Path(self.profile) / "DevToolsActivePort").read_text().split()[1]
        async with websockets.connect(f"ws://127.0.0.1:{self.port}{browser_ws}", max_size=2**24) as ws:
            await ws.send(json.dumps({"id": 1, "method": "Target.createTarget",
                                      "params": {"url": "about:blank", "newWindow": new_window}}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == 1:
                    target = msg["result"]["targetId"]
                    break
        page = Page(await websockets.connect(f"ws://127.0.0.1:{self.port}/devtools/page/{target}", max_size=2**24))
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, ws):
        self.ws = ws
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await self.ws.recv())
                if msg.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"]))
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str, timeout: float = 30):
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {expression}; console: {self.console[-10:]}")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await self.ws.close()
