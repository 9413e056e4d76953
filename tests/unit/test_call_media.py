"""Media leaves the signaling core (issue 13 item 2), socket-free.

The media shell hands a transport's RTP and RTCP to its call's
:class:`callsgw.sfu.call.MediaPort`; the router's copies and feedback are
queued on the receivers' transports, speaker changes are the only thing the
core hears, and ``GatewayCore.transport_event`` ignores media.
"""

from __future__ import annotations

from aiortc import rtp as aio

from callsgw.sfu.call import Call
from callsgw.sfu.router import SpeakerChanged
from callsgw.transport.media import RtcpReceived, RtpReceived
from callsgw.wire import rtcp
from tests.unit.test_router import exts, forwarded, opus, published, voice_packet


class FakeTransport:
    def __init__(self):
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(packet)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(packet)
        return True


class FakeParticipant:
    def __init__(self):
        self.transport = FakeTransport()


def a_call():
    call = Call("standup", 0.0)
    for pid in ("alice", "bob"):
        call.participants[pid] = FakeParticipant()
    call.router.set_published("alice", "voice", published("0", "voice", [opus(111)], exts(level=1), (1111,)))
    call.router.set_forwarded("bob", [forwarded("5", ("alice", "voice"), 0xB0B, [opus(109)], exts(level=2))])
    return call


def test_rtp_from_a_port_is_queued_on_the_receivers_transport():
    call = a_call()
    port = call.media.port("alice")
    port.rtp(voice_packet(1, level=20), 0.0)
    bob = call.participants["bob"].transport
    assert call.media.take_touched() == [bob] and call.media.take_touched() == []
    (copy,) = [aio.RtpPacket.parse(p) for p in bob.rtp]
    assert (copy.ssrc, copy.payload_type, copy.sequence_number) == (0xB0B, 109, 1)
    assert not call.participants["alice"].transport.rtp


def test_rtcp_from_a_port_goes_to_the_routers_policy():
    call = a_call()
    call.media.port("alice").rtp(voice_packet(1), 0.0)
    call.media.take_touched()
    # bob's PLI about an audio stream: no keyframe request, counted by the router
    call.media.port("bob").rtcp(rtcp.build_pli(0xBEEF, 0xB0B), 0.1)
    assert call.media.take_touched() == []
    assert call.router.stats()["subscribers"]["bob"]["routes"]["alice/voice"]["drops"] == {
        "keyframe_request_no_source": 1}


def test_speaker_changes_and_receiver_reports_come_from_the_calls_timer():
    call = a_call()
    port = call.media.port("alice")
    events = []
    for i in range(60):
        now = i * 0.02
        port.rtp(voice_packet(i, level=10), now)
        if (timer := call.media.get_timer()) is not None and timer <= now:
            call.media.handle_timer(now)
        events += call.media.take_events()
    assert events == [SpeakerChanged("alice", None)]
    call.media.take_touched()
    call.media.handle_timer(2.0)  # the receiver report to alice (RFC 3550 section 6.4.2)
    alice = call.participants["alice"].transport
    assert call.media.take_touched() == [alice] and alice.rtcp


def test_the_signaling_core_ignores_media_events():
    from callsgw.dtls.certificate import DtlsCertificate
    from callsgw.signaling.core import GatewayCore

    core = GatewayCore(api_secret=b"k" * 32, certificate=DtlsCertificate.generate(),
                       media_address=("127.0.0.1", 9), announce=("127.0.0.1",))
    transport = object()
    core.transport_event(transport, RtpReceived(voice_packet(1), ("127.0.0.1", 5000)), 0.0)
    core.transport_event(transport, RtcpReceived(rtcp.build_pli(1, 2), ("127.0.0.1", 5000)), 0.0)
    assert core.actions() == []
    assert not hasattr(core, "route_started")
