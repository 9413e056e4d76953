"""The shared TCP port with real sockets (callsgw/server/tcp.py, issue #18 deliverable 1).

HTTPS still works through the first-bytes front; an ICE-TCP connection is gated like a UDP peer
(DTLS from it is dropped until an ICE check passes on that very connection); the per-address cap,
the ICE timeout and the framing limit close connections; ``ice_tcp_port`` moves ICE-TCP to a port
of its own, where anything else is closed.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from callsgw.transport.tcp import frame
from tests.signaling.gateway import running_gateway
from tests.unit.test_ice_tcp_framing import binding_request

TIMEOUT = 60


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def https_get(port: int, path: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the gateway closes (EOF or reset) within ``seconds``; what it sends is ignored."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def wait_until(predicate, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("engine", ["native-thread", "python"])
async def test_https_and_ice_tcp_share_the_port_and_ice_gates_dtls_per_connection(tmp_path, engine):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, media_engine=engine) as app:
        body = await https_get(app.port)
        assert body.startswith(b"HTTP/1.1 200") and body.endswith(b"ok\n")
        mux = app.media.mux
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        # a check for a ufrag the gateway never handed out, then a DTLS record
        writer.write(frame(binding_request("nobody12:peer")) + frame(b"\x16\xfe\xfd" + b"\x00" * 40))
        await writer.drain()
        await wait_until(lambda: mux.drops["stun_unknown_ufrag"] >= 1 and
                         mux.drops["dtls_from_unknown_address"] >= 1)
        assert app.ice_tcp.stats["ice"] == 1 and len(app.ice_tcp.connections) == 1
        writer.close()
        await wait_until(lambda: not app.ice_tcp.connections)
        assert (await https_get(app.port)).startswith(b"HTTP/1.1 200")  # the port still serves HTTPS


async def test_a_connection_that_never_passes_ice_is_closed_after_the_timeout(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_timeout=0.5) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(frame(binding_request("nobody12:peer")))
        await writer.drain()
        assert await closed_within(reader, 5)
        assert app.ice_tcp.stats["ice_timeout"] == 1 and not app.ice_tcp.connections


async def test_a_silent_connection_is_closed_after_the_first_bytes_timeout(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_timeout=0.5) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        assert await closed_within(reader, 5)
        assert app.ice_tcp.stats["first_bytes_timeout"] == 1


async def test_connections_per_source_address_are_capped(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_per_address=3) as app:
        held = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            writer.write(frame(binding_request("nobody12:peer")))
            held.append((reader, writer))
        await wait_until(lambda: len(app.ice_tcp.connections) == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(frame(binding_request("nobody12:peer")))
        assert await closed_within(reader, 5)
        assert app.ice_tcp.stats["refused_per_address"] == 1 and len(app.ice_tcp.connections) == 3
        for r, w in held:
            assert not await closed_within(r, 0.05)
            w.close()
        # HTTPS from the same address is not counted against the cap
        assert (await https_get(app.port)).startswith(b"HTTP/1.1 200")


async def test_an_oversized_frame_closes_the_connection(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(frame(binding_request("nobody12:peer")) + (4000).to_bytes(2, "big") + b"x" * 4000)
        assert await closed_within(reader, 5)
        assert app.ice_tcp.stats["framing_error"] == 1


async def test_garbage_first_bytes_go_to_the_http_server_which_refuses_them(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"\x00\x01garbage that is no TLS record\r\n\r\n")
        assert await closed_within(reader, 15)
        assert app.ice_tcp.stats["other"] == 1 and app.ice_tcp.stats["ice"] == 0


async def test_ice_tcp_on_a_port_of_its_own(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_port=0) as app:
        ice_port = app.ice_tcp.local_address[1]
        assert ice_port != app.port and app.core.ice_tcp_port == ice_port
        assert (await https_get(app.port)).startswith(b"HTTP/1.1 200")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
            await https_get(ice_port)  # no TLS there: closed
        assert app.ice_tcp.stats["not_ice"] == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", ice_port)
        writer.write(frame(binding_request("nobody12:peer")))
        await wait_until(lambda: app.media.mux.drops["stun_unknown_ufrag"] >= 1)
        writer.close()


async def test_ice_tcp_off_answers_without_tcp_candidates(tmp_path):
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp=False) as app:
        assert app.ice_tcp is None and app.core.ice_tcp_port is None
        assert (await https_get(app.port)).startswith(b"HTTP/1.1 200")


async def test_silent_connections_from_one_address_cannot_shut_the_port_to_others(tmp_path):
    from callsgw.server.tcp import TcpFront

    limit = TcpFront.__init__.__kwdefaults__["max_pending_per_address"]
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_timeout=5.0) as app:
        silent = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(limit)]
        await wait_until(lambda: len(app.ice_tcp._pending) == limit)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        assert await closed_within(reader, 2)  # one more from the same address: closed at once
        assert app.ice_tcp.stats["refused_pending"] == 1
        # another address still gets the page while the silent ones are held
        r2, w2 = await asyncio.open_connection("127.0.0.1", app.port, ssl=insecure(), local_addr=("127.0.0.2", 0))
        w2.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r2.read(), 10)).startswith(b"HTTP/1.1 200")
        w2.close()
        for _, w in silent:
            w.close()


async def test_metrics_show_the_tcp_port_and_ice_tcp(tmp_path):
    from callsgw.server.metrics import render

    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, ice_tcp_timeout=0.5) as app:
        assert (await https_get(app.port)).startswith(b"HTTP/1.1 200")
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(frame(binding_request("nobody12:peer")))
        await wait_until(lambda: len(app.ice_tcp.connections) == 1)
        text = render(app)[0].decode()
        assert "callsgw_ice_tcp_connections 1.0" in text
        assert 'callsgw_tcp_port_events_total{event="tls"} 1.0' in text
        assert 'callsgw_tcp_port_events_total{event="ice"} 1.0' in text
        assert await closed_within(reader, 5)
        text = render(app)[0].decode()
        assert "callsgw_ice_tcp_connections 0.0" in text
        assert 'callsgw_tcp_port_events_total{event="ice_timeout"} 1.0' in text


async def test_ice_tcp_over_ipv6(tmp_path):
    """An IPv6 gateway: the bridge binds ::1 and sends to the media socket's IPv6 address."""
    async with asyncio.timeout(TIMEOUT), running_gateway(tmp_path, listen_host="::1", media_host="::1",
                                                        ice_host="::1") as app:
        reader, writer = await asyncio.open_connection("::1", app.port)
        writer.write(frame(binding_request("nobody12:peer")) + frame(b"\x16\xfe\xfd" + b"\x00" * 40))
        await writer.drain()
        mux = app.media.mux
        await wait_until(lambda: mux.drops["stun_unknown_ufrag"] >= 1 and mux.drops["dtls_from_unknown_address"] >= 1)
        (connection,) = app.ice_tcp.connections
        assert connection.bridge_address[0] == "::1"
        writer.close()
        reader, writer = await asyncio.open_connection("::1", app.port, ssl=insecure())
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
