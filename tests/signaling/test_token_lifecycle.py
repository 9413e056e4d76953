"""Token lifetime bound, revocation and API secret rotation against a running gateway."""

from __future__ import annotations

import asyncio
import pytest

import callsgw.cli as cli
from callsgw.client import connect
from callsgw.client.session import JoinError
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway


def url(app) -> str:
    return f"wss://127.0.0.1:{app.port}/ws"


async def refused_with(app, token) -> int:
    with pytest.raises(JoinError) as refused:
        await connect(url(app), token, ssl=False)
    return refused.value.code


async def test_revoking_a_token_ends_its_session_and_blocks_it(tmp_path):
    async with running_gateway(tmp_path) as app:
        secret = app.secrets.current()
        leaked = tokens.mint(secret, call="room", name="ann", ttl=600)
        other = await connect(url(app), tokens.mint(secret, call="room", name="ben"), ssl=False)
        victim = await connect(url(app), leaked, ssl=False)
        try:
            assert cli.main(["token", "revoke", "--data-dir", str(app.config.data_dir), leaked]) == 0
            closed = await asyncio.wait_for(victim.wait_closed(), 10)  # the gateway polls every 2 s
            assert closed.code == 4001 and "revoked" in closed.reason
            assert await refused_with(app, leaked) == 4001
            await other.ping()  # the rest of the call goes on
            async with asyncio.timeout(5):
                while other.participants:
                    await asyncio.sleep(0.05)
        finally:
            await victim.close()
            await other.close()


async def test_a_token_living_longer_than_max_token_ttl_is_refused(tmp_path):
    async with running_gateway(tmp_path, max_token_ttl=3600.0) as app:
        long_lived = tokens.mint(app.secrets.current(), call="room", name="ann", ttl=7200)
        assert await refused_with(app, long_lived) == 4001
        ok = await connect(url(app), tokens.mint(app.secrets.current(), call="room", name="ann", ttl=3600), ssl=False)
        await ok.close()


@pytest.mark.parametrize("grace", [0, 300])
async def test_rotation_reaches_the_running_gateway(tmp_path, grace):
    async with running_gateway(tmp_path) as app:
        old_token = tokens.mint(app.secrets.current(), call="room", name="ann")
        assert cli.main(["api-secret", "rotate", "--data-dir", str(app.config.data_dir), "--grace", str(grace)]) == 0
        await asyncio.sleep(1.5)  # the gateway checks the secret files every second
        new_token = tokens.mint(app.secrets.current(), call="room", name="ben")
        fresh = await connect(url(app), new_token, ssl=False)
        try:
            if grace:
                old = await connect(url(app), old_token, ssl=False)
                await old.close()
            else:
                assert await refused_with(app, old_token) == 4001
        finally:
            await fresh.close()


async def test_the_admin_api_lists_revoked_tokens(tmp_path):
    import json
    import ssl
    import urllib.request

    async with running_gateway(tmp_path) as app:
        key = app.datadir.rotate_admin_key()
        assert cli.main(["token", "revoke", "--data-dir", str(app.config.data_dir), "some-jti"]) == 0
        await asyncio.sleep(2.5)
        context = ssl._create_unverified_context()
        request = urllib.request.Request(f"https://127.0.0.1:{app.port}/api/v1/tokens/revoked",
                                         headers={"Authorization": f"Bearer {key}"})
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, context=context).read())
        listed = json.loads(body)["revoked"]
        assert [entry["jti"] for entry in listed] == ["some-jti"] and listed[0]["until"] > 0
