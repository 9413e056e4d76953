"""Both media servers are a callsgw.server.media.MediaServer, and the gateway runs either as app.media."""

from __future__ import annotations

import inspect

import pytest

from callsgw.server.media import MediaServer
from callsgw.server.native import NativeMediaServer
from callsgw.server.udp import MediaShell, UdpMediaServer
from tests.signaling.gateway import running_gateway

METHODS = ("add", "remove", "refresh", "flush", "sync_counters", "close")


@pytest.mark.parametrize("server", [UdpMediaServer, NativeMediaServer])
def test_each_server_has_the_protocols_methods_with_its_signatures(server):
    assert issubclass(server, MediaShell)
    for name in METHODS:
        ours, wanted = inspect.signature(getattr(server, name)), inspect.signature(getattr(MediaServer, name))
        assert list(ours.parameters) == list(wanted.parameters), (server.__name__, name)
    assert isinstance(server.__dict__.get("local_address"), property)


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_the_running_gateways_media_is_a_media_server(tmp_path, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        assert isinstance(app.media, MediaServer)
        assert isinstance(app.media, UdpMediaServer if engine == "python" else NativeMediaServer)
        assert getattr(app.media, "threaded", False) == (engine == "native-thread")
        assert app.media.local_address[1] == app.media_port
        assert not hasattr(app, "udp")
