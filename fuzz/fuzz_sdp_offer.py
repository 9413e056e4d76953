"""The gateway's SDP offer parser (callsgw.sdp.parse_offer): raises only ``SdpError``.

An offer that parses is answered (``build_answer``) as the gateway would.
"""

from __future__ import annotations

from callsgw import sdp
from callsgw.wire.sdp import SdpError

LOCAL = sdp.LocalTransport(
    ice_ufrag="gwfz",
    ice_pwd="g" * 24,
    fingerprint=":".join(["AB"] * 32),
    addresses=("192.0.2.1",),
    port=40000,
)


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        remote = sdp.parse_offer(text)
    except SdpError:
        return
    assert remote.ice_ufrag and remote.ice_pwd and remote.setup in ("actpass", "active")
    answer = sdp.build_answer(remote, LOCAL)
    assert answer.startswith("v=0")
