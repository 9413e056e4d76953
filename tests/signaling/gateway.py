"""Run a real `callsgw serve` gateway on loopback for a test."""

from __future__ import annotations

import contextlib
import dataclasses

from callsgw.config import Config
from callsgw.server.app import GatewayApp


@contextlib.asynccontextmanager
async def running_gateway(tmp_path, **overrides):
    """A gateway on 127.0.0.1 with OS-chosen TCP and UDP ports."""
    config = Config(
        data_dir=tmp_path / "data",
        listen_host="127.0.0.1",
        port=0,
        media_host="127.0.0.1",
        media_port=0,
        ice_host="127.0.0.1",
        shutdown_grace=overrides.pop("shutdown_grace", 1.0),
    )
    config = dataclasses.replace(config, **overrides)
    app = GatewayApp(config)
    await app.start()
    stopped = False
    original_stop = app.stop

    async def stop_once():
        nonlocal stopped
        if not stopped:
            stopped = True
            await original_stop()

    app.stop = stop_once
    try:
        yield app
    finally:
        await app.stop()
