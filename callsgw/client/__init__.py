"""callsgw.client: the Python call client, and the reference for other clients.

It joins a call through the signaling protocol of ``docs/PROTOCOL.md`` and
carries media on the project's own cores: a controlling ICE agent
(:mod:`callsgw.client.ice`, RFC 8445 / RFC 7675), the DTLS client role
(:mod:`callsgw.dtls`, RFC 6347 / RFC 5764) and SRTP (:mod:`callsgw.srtp`,
RFC 3711 / RFC 7714), composed sans-I/O in :mod:`callsgw.client.transport`.
Every signaling decision (offers, answers, glare, resume, ICE restart) is
made by the sans-I/O :class:`~callsgw.client.negotiation.ClientNegotiation`;
:mod:`callsgw.client.session` is the asyncio shell around both.
SDP is written and read with aiortc's ``sdp`` module (:mod:`callsgw.client.sdp`).

Typical use::

    from callsgw.client import connect

    async with await connect("wss://gateway:8443/ws", token) as session:
        await session.wait_connected()
        session.send_voice(rtp_packet)          # protected with SRTP
        packet = await session.rtp.get()        # decrypted RTP from the others
        await session.set_screen_share(True)    # renegotiates, handles glare
        await session.leave()
"""

from callsgw.client.ice import IceControllingAgent, IceFailed, IceState, PairSelected
from callsgw.client.negotiation import ClientNegotiation
from callsgw.client.sdp import (
    MediaSection,
    RemoteDescription,
    RemoteMedia,
    SdpError,
    build_answer,
    build_offer,
    parse_answer,
    parse_offer,
)
from callsgw.client.session import (
    CallSession,
    JoinError,
    MediaChannel,
    MediaError,
    SessionClosed,
    SessionError,
    SignalingError,
    connect,
    open_media_channel,
)
from callsgw.client.transport import (
    ClientSecurityRecord,
    ClientState,
    ClientTransport,
    Closed,
    Connected,
    Failed,
    IceRestarted,
    RtcpReceived,
    RtpReceived,
)

__all__ = [
    "CallSession",
    "ClientNegotiation",
    "ClientSecurityRecord",
    "ClientState",
    "ClientTransport",
    "Closed",
    "Connected",
    "Failed",
    "IceControllingAgent",
    "IceRestarted",
    "IceFailed",
    "IceState",
    "JoinError",
    "MediaChannel",
    "MediaError",
    "MediaSection",
    "PairSelected",
    "RemoteDescription",
    "RemoteMedia",
    "RtcpReceived",
    "RtpReceived",
    "SdpError",
    "SessionClosed",
    "SessionError",
    "SignalingError",
    "build_answer",
    "build_offer",
    "connect",
    "open_media_channel",
    "parse_answer",
    "parse_offer",
]
