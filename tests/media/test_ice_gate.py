"""The ICE gate: nothing but STUN is taken from an address before it passed an authenticated check.

Two gates guard it (RFC 8445 section 7.3, RFC 8826 section 4.2; the 2024
DTLS ClientHello race): the mux binds an address to a participant only after
that participant's ICE-lite agent validated it (``transport/mux.py``), and the
transport refuses DTLS and SRTP from any address its agent has not validated
(``transport/media.py``, defence in depth). Each gate is tested on its own,
sans-I/O, and both together against a real gateway on both media engines: a
stranger that knows a participant's ufrag but not its password gets no answer
to anything and its datagrams are counted as from an unknown address.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aioice import stun as aiostun

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.connection import DtlsConnection
from callsgw.server import views
from callsgw.transport.media import RtpReceived, TransportState
from callsgw.wire.demux import PacketKind
from tests.admin.test_admin_api import two_party_call
from tests.signaling.gateway import running_gateway
from tests.unit.test_transport_mux import CLIENT, OTHER, Setup, binding_request, connected_setup, rtp


def _role_conflict_check(s: Setup) -> bytes:
    """An authenticated check carrying ICE-CONTROLLED: answered 487, never validating (RFC 8445 7.3.1.1)."""
    msg = aiostun.Message(message_method=aiostun.Method.BINDING, message_class=aiostun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{s.transport.local_ufrag}:{s.client_ufrag}"
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLED"] = 0x1122334455667788
    msg.add_message_integrity(s.transport.local_pwd.encode())
    msg.add_fingerprint()
    return bytes(msg)


# -- the mux's gate (transport/mux.py) ------------------------------------------------------


def test_mux_binds_no_address_for_a_check_that_did_not_validate_it():
    s = Setup()
    flight = s.client.datagrams_to_send()
    # a check with the right ufrag but a wrong password, and an authenticated role conflict
    assert s.check(0.1, pwd="x" * 24) is None
    s.mux.receive(_role_conflict_check(s), CLIENT, 0.2)
    s.mux.datagrams_to_send()  # the 487
    assert not s.transport.ice.is_validated(CLIENT)
    assert s.mux.transport_for(CLIENT) is None
    for datagram in flight:
        s.mux.receive(datagram, CLIENT, 0.3)
    s.mux.receive(rtp(1), CLIENT, 0.3)
    assert s.mux.drops["dtls_from_unknown_address"] == len(flight)
    assert s.mux.drops["rtp_from_unknown_address"] == 1
    assert not s.transport.counters.drops, "the transport never saw them"
    assert s.mux.datagrams_to_send() == [] and s.transport.state is TransportState.NEW
    # the positive control: a valid check binds it
    assert s.check(0.4) is not None
    assert s.mux.transport_for(CLIENT) is s.transport


# -- the transport's gate (transport/media.py) -------------------------------------------------


def test_transport_takes_only_stun_from_an_unvalidated_address():
    s = Setup()
    flight = s.client.datagrams_to_send()
    for datagram in flight:  # straight to the transport, past the mux
        s.transport.receive(PacketKind.DTLS, datagram, CLIENT, 0.1)
    assert s.transport.counters.drops["dtls_from_unvalidated_address"] == len(flight)
    assert s.transport.datagrams_to_send() == [], "no HelloVerifyRequest or ServerHello to an unvalidated address"
    assert s.transport.state is TransportState.NEW

    c, tx, _ = connected_setup()
    c.transport.receive(PacketKind.RTP, tx.protect(rtp(1)), OTHER, 2.0)  # valid SRTP, wrong address
    stranger = DtlsConnection("client", DtlsCertificate.generate(), c.gw_cert.fingerprint, now=2.0)
    for datagram in stranger.datagrams_to_send():
        c.transport.receive(PacketKind.DTLS, datagram, OTHER, 2.0)
    assert c.transport.counters.drops["rtp_from_unvalidated_address"] == 1
    assert c.transport.counters.drops["dtls_from_unvalidated_address"] >= 1
    assert not [e for e in c.events() if isinstance(e, RtpReceived)]
    assert c.transport.datagrams_to_send() == []
    assert c.transport.state is TransportState.CONNECTED and c.transport.selected_address == CLIENT


# -- both gates, a real gateway -------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_a_stranger_who_knows_the_ufrag_gets_no_answer(tmp_path, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        alice, bob, _ = await two_party_call(app, call="gate")
        (p,) = [p for p in app.core.calls["gate"].participants.values() if p.name == "alice"]
        selected = p.transport.selected_address
        before = views.media_drops(app)

        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        stranger.setblocking(False)
        gateway = ("127.0.0.1", app.media_port)
        check = binding_request(p.transport.local_ufrag, p.transport.remote.ice_ufrag, "not-the-password-123456")
        hello = DtlsConnection("client", DtlsCertificate.generate(), DtlsCertificate.generate().fingerprint)
        flight = hello.datagrams_to_send()
        stranger.sendto(check, gateway)
        await asyncio.sleep(0.05)
        for datagram in flight:
            stranger.sendto(datagram, gateway)
        stranger.sendto(rtp(7), gateway)
        await asyncio.sleep(0.5)
        try:
            answer = stranger.recv(4096)
        except BlockingIOError:
            answer = None
        stranger.close()
        assert answer is None, "the gateway answered a stranger"

        after = views.media_drops(app)
        assert after["ice_bad_integrity"] == before["ice_bad_integrity"] + 1
        assert after["dtls_from_unknown_address"] == before["dtls_from_unknown_address"] + len(flight)
        assert after["rtp_from_unknown_address"] == before["rtp_from_unknown_address"] + 1
        for reason in ("dtls_from_unvalidated_address", "rtp_from_unvalidated_address"):
            assert after[reason] == before[reason], reason
        assert p.transport.selected_address == selected and p.transport.state is TransportState.CONNECTED
        await alice.leave()
        await bob.leave()
