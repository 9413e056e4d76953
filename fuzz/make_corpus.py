"""Write the seed corpora under fuzz/corpus/<target>/: ``python -m fuzz.make_corpus``.

Seeds come from the real RTP captures in ``../shared/captures`` (split into packets with
``loadtest.capture``; set ``CALLSGW_CAPTURES`` to another directory), the RFC 5769 STUN vectors of
``tests/unit/test_stun.py``, and small well-formed messages built with the project's own builders
(RTCP feedback, SDP offers and answers, tokens, signaling frames, tiny pcap/pcapng files). A few
dozen per target, each small (``python -m fuzz.make_corpus srtp engine dtls_records`` writes only
the named targets' seeds): libFuzzer grows the working corpus from there, and
``scripts/fuzz.sh --minimize`` folds what a long run found back in, minimized.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

from fuzz import CORPUS_DIR

REPO = Path(__file__).resolve().parent.parent
CAPTURES = Path(os.environ.get("CALLSGW_CAPTURES", REPO.parent / "shared" / "captures"))


def _write(target: str, seeds: list[bytes]) -> int:
    out = CORPUS_DIR / target
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(seeds)


def capture_packets() -> list[bytes]:
    """A handful of distinct RTP packets per capture: first, marker, small and large."""
    from loadtest.capture import read_udp

    picked: list[bytes] = []
    for pcap in sorted(CAPTURES.glob("*.pcap")):
        payloads = [d.payload for d in read_udp(pcap)]
        chosen = payloads[:2] + [p for p in payloads if p[1] & 0x80][:2] + sorted(payloads, key=len)[:1]
        picked += [p[:300] for p in chosen]  # the header and a little payload is what a parser reads
    return picked


def with_extensions(packet: bytes) -> list[bytes]:
    """The packet with browser-like RFC 8285 extensions: one-byte (audio level, mid) and two-byte."""
    b0 = (packet[0] | 0x10) & 0xF0  # X set, no CSRCs
    head = bytes([b0]) + packet[1:12]
    one = bytes([0x10, 0x85, 0x31]) + b"0" + b"\0" * 0  # id 1 audio level, id 3 mid "0"
    one += b"\0" * (-len(one) & 3)
    two = bytes([0x01, 0x01, 0x55, 0x03, 0x02, 0x30, 0x31]) + b"\0"
    out = [
        head + b"\xbe\xde" + struct.pack("!H", len(one) // 4) + one + packet[12:80],
        head + b"\x10\x00" + struct.pack("!H", len(two) // 4) + two + packet[12:80],
    ]
    padded = bytearray(out[0] + b"\0\0\0\x04")
    padded[0] |= 0x20
    out.append(bytes(padded))
    return out


def rtcp_seeds() -> list[bytes]:
    from callsgw.wire import rtcp

    block = rtcp.ReportBlock(0x1234, 3, 5, 1000, 20, 0x11223344, 100)
    sr = rtcp.build_sr(0xAABBCCDD, 0x0102030405060708, 960, 10, 1000, [block])
    rr = rtcp.build_rr(0xAABBCCDD, [block])
    sdes = rtcp.build_sdes_cname(0xAABBCCDD, "fuzz@callsgw")
    pli = rtcp.build_pli(1, 2)
    fir = rtcp.build_fir(1, [(2, 7)])
    nack = rtcp.build_nack(1, 2, rtcp.nack_entries([100, 101, 105, 140]))
    bye = b"\x81\xcb\x00\x01" + struct.pack("!I", 0xAABBCCDD)
    remb = b"\x8f\xce\x00\x05" + struct.pack("!II", 1, 0) + b"REMB" + bytes([1, 0x0B, 0xB8, 0x00]) + struct.pack("!I", 2)
    tcc = b"\x8f\xcd\x00\x04" + struct.pack("!II", 1, 2) + struct.pack("!HHI", 1, 2, 0x00000100)
    app = b"\x80\xcc\x00\x02" + struct.pack("!I", 1) + b"name"
    xr = b"\x80\xcf\x00\x01" + struct.pack("!I", 1)
    other_fb = b"\x82\xce\x00\x02" + struct.pack("!II", 1, 2)
    padded = bytearray(rr + b"\0\0\0\x04")
    padded[0] |= 0x20
    padded[2:4] = struct.pack("!H", len(padded) // 4 - 1)
    return [sr, rr, sr + sdes, rr + sdes + nack, rr + pli + fir, sr + remb, rr + tcc, rr + bye, app, xr, other_fb,
            pli + nack, bytes(padded), sr + sdes + bye + app]


def stun_seeds() -> list[bytes]:
    from aioice import stun as aioice_stun

    from fuzz.fuzz_stun import KEY
    from tests.unit import test_stun as t

    seeds = [t.RFC5769_REQUEST, t.RFC5769_RESPONSE_V4, t.RFC5769_RESPONSE_V6]
    msg = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    msg.attributes["USERNAME"] = "gwfz:clfz"
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(KEY)
    msg.add_fingerprint()
    seeds.append(bytes(msg))
    bare = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.INDICATION)
    seeds.append(bytes(bare))
    return seeds


def sdp_seeds() -> tuple[list[bytes], list[bytes]]:
    """(offers as the gateway receives them, descriptions as the client receives them)."""
    from callsgw import sdp as gw
    from callsgw.client import sdp as cl
    from fuzz.fuzz_client_sdp import FINGERPRINT, PWD, UFRAG
    from fuzz.fuzz_sdp_offer import LOCAL

    offers = [
        cl.build_offer(UFRAG, PWD, FINGERPRINT, ["voice"]),
        cl.build_offer(UFRAG, PWD, FINGERPRINT, ["voice", "screen"], candidates=[("192.0.2.9", 5000)]),
    ]
    answers = [gw.build_answer(gw.parse_offer(o), LOCAL) for o in offers]
    gateway_offers = [a.replace("a=setup:passive", "a=setup:actpass") for a in answers]
    extra = [p.read_text() for p in sorted(CAPTURES.glob("*.sdp"))]
    to_gateway = [s.encode() for s in offers + extra]
    to_client = [s.encode() for s in answers + gateway_offers + extra[:1]]
    return to_gateway, to_client


def signaling_seeds() -> list[bytes]:
    frames = [
        {"type": "join", "token": "a.b.c", "sdp": "v=0\r\n", "name": "ann", "call": "c1"},
        {"type": "offer", "id": 3, "sdp": "v=0\r\n"},
        {"type": "answer", "id": 4, "sdp": "v=0\r\n"},
        {"type": "mute", "muted": True},
        {"type": "screen", "sharing": False},
        {"type": "leave"},
        {"type": "ping", "id": 9},
        {"type": "resume", "participant_id": "p1", "call": "c1", "credential": "xyz"},
    ]
    return [json.dumps(f).encode() for f in frames] + [b"[1,2]", b'{"type":7}']


def token_seeds() -> list[bytes]:
    from callsgw.signaling import tokens

    from fuzz.fuzz_tokens import CALL, NOW, SECRET

    good = tokens.mint(SECRET, call=CALL, name="Ann", sub="ann", ttl=3600, now=NOW - 10)
    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = {"call": CALL, "sub": "ann", "name": "Ann", "perm": ["publish_voice"], "iat": NOW - 10,
              "exp": NOW + 600, "jti": "j1"}
    return [
        b"\0" + good.encode(),
        b"\0" + good.rsplit(".", 1)[0].encode() + b".AAAA",
        b"\1" + header + b"\0" + json.dumps(claims).encode(),
        b"\1" + b'{"alg":"none"}' + b"\0" + json.dumps(claims).encode(),
        b"\1" + header + b"\0" + json.dumps({**claims, "exp": NOW - 1}).encode(),
    ]


def negotiation_seeds(gateway_offer: bytes, answer: bytes) -> list[bytes]:
    msgs = [
        {"type": "participant_joined", "participant": {"id": "p2", "name": "Ben"}},
        {"type": "mute", "participant_id": "p2", "muted": True},
        {"type": "participant_left", "participant_id": "p2"},
        {"type": "error", "code": "glare", "ref": "offer", "id": 1, "message": "glare"},
        {"type": "resumed", "participants": [{"id": "p2"}], "answer": {"id": 1, "sdp": "v=0"}},
        {"type": "offer", "id": 5, "sdp": gateway_offer.decode()},
    ]
    return [json.dumps(m).encode() for m in msgs] + [json.dumps(msgs[:3]).encode(), gateway_offer, answer]


def _pcap(linktype: int, frames: list[bytes], magic: bytes = b"\xd4\xc3\xb2\xa1") -> bytes:
    out = magic + struct.pack("<HHiIII", 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame
    return out


def _pcapng(linktype: int, frames: list[bytes]) -> bytes:
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) & 3)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", linktype, 0, 65535) + struct.pack("<HHB", 9, 1, 9) + b"\0\0\0" + b"\0" * 4)
    epbs = b"".join(
        block(6, struct.pack("<IIIII", 0, 0, i, len(f), len(f)) + f) for i, f in enumerate(frames)
    )
    spb = block(3, struct.pack("<I", len(frames[0])) + frames[0])
    return shb + idb + epbs + spb


def capture_seeds(packets: list[bytes]) -> list[bytes]:
    def udp4(payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", 5000, 40000, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1]))
        return ip + udp

    def udp6(payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", 5000, 40000, 8 + len(payload), 0) + payload
        return struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + b"\0" * 15 + b"\1" + b"\0" * 15 + b"\1" + udp

    small = [p[:40] for p in packets[:2]]
    ip4 = [udp4(p) for p in small]
    eth = [b"\0" * 12 + b"\x08\x00" + f for f in ip4]
    vlan = [b"\0" * 12 + b"\x81\x00\x00\x05\x08\x00" + f for f in ip4]
    null = [struct.pack("<I", 2) + f for f in ip4]
    sll = [b"\0\0\0\1\0\6" + b"\0" * 8 + b"\x08\x00" + f for f in ip4]
    seeds = [
        _pcap(0, null),
        _pcap(1, eth + vlan),
        _pcap(113, sll),
        _pcap(101, ip4 + [udp6(small[0])]),
        _pcap(229, [udp6(small[0])], magic=b"\x4d\x3c\xb2\xa1"),
        _pcapng(1, eth),
        _pcapng(228, ip4),
    ]
    seeds.append(gzip.compress(seeds[0], mtime=0))
    big_endian = b"\xa1\xb2\xc3\xd4" + struct.pack(">HHiIII", 2, 4, 0, 0, 65535, 101)
    big_endian += b"".join(struct.pack(">IIII", 1, 0, len(f), len(f)) + f for f in ip4)
    seeds.append(big_endian)
    return seeds


def whip_seeds() -> list[bytes]:
    """WHIP/WHEP request heads (and bodies) as clients send them."""
    offer = b"v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    return [
        b"POST /whip/room HTTP/1.1\r\nHost: gw:8444\r\nAuthorization: Bearer abc.def.ghi\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(offer) + offer,
        b"POST /whep/room HTTP/1.1\r\nauthorization: bearer x\r\ncontent-type: application/sdp; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
        b"DELETE /whip/room/AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"PATCH /whip/room/AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nContent-Type: application/trickle-ice-sdpfrag\r\n"
        b"If-Match: \"abc\"\r\nContent-Length: 22\r\n\r\na=end-of-candidates\r\n",
        b"OPTIONS /whep/r.1 HTTP/1.0\r\n\r\n",
    ]


def srtp_seeds(packets: list[bytes], rtcp: list[bytes]) -> list[bytes]:
    """Both profiles: RTP and RTCP protected under the target's keys, and plain for it to protect."""
    from fuzz.fuzz_srtp import PROFILES, encode, sender

    seeds = []
    for bit, profile in enumerate(PROFILES):
        tx = sender(profile)
        rtp, ctl = packets[::2][:5], rtcp[:5]
        seeds += [encode(bit, [tx.protect(p)]) for p in rtp]
        seeds += [encode(bit | 2, [tx.protect_rtcp(p)]) for p in ctl]
        seeds += [encode(bit | 4, [p]) for p in rtp[:2]] + [encode(bit | 6, [p]) for p in ctl[:2]]
        seeds.append(encode(bit, [tx.protect(p) for p in packets[:3]]))  # one stream, consecutive indexes
        seeds.append(encode(bit | 4, packets[:3] + packets[:1]))  # a replay
    return seeds


def engine_seeds(packets: list[bytes], rtcp: list[bytes]) -> list[bytes]:
    """Datagrams for the engine harness: video and audio RTP as P sends it, SRTCP, STUN, DTLS, garbage."""
    from fuzz.fuzz_engine import (AUDIO_SSRC, FROM_STRANGER, PROTECT_RTCP, PROTECT_RTP, UP_KEY, UP_SALT,
                                  VIDEO_SSRC, encode)
    from callsgw.srtp import Profile, Session

    seqs = iter(range(1000, 2000))

    def on(packet: bytes, ssrc: int, pt: int) -> bytes:  # one stream each, consecutive sequence numbers
        b = bytearray(packet)
        b[1] = (b[1] & 0x80) | pt
        b[2:4] = struct.pack("!H", next(seqs))
        b[8:12] = struct.pack("!I", ssrc)
        return bytes(b)

    video = [on(p, VIDEO_SSRC, 96) for p in packets[::3][:4]]
    audio = [on(p, AUDIO_SSRC, 111) for p in packets[1::3][:3]]
    rtx = on(packets[0], VIDEO_SSRC, 97)[:12] + b"\x03\xe8" + packets[0][12:60]
    ext = [on(p, VIDEO_SSRC, 96) for p in with_extensions(packets[0])]
    tx = Session(Profile.AEAD_AES_128_GCM, UP_KEY, UP_SALT, allow_repeat_tx=True)
    seeds = [encode([(PROTECT_RTP, p)]) for p in video + audio + ext + [rtx]]
    seeds += [encode([(PROTECT_RTCP, r)]) for r in rtcp[:4]]
    seeds.append(encode([(0, tx.protect(video[0])), (0, tx.protect_rtcp(rtcp[0]))]))  # as is, same keys
    seeds.append(encode([(PROTECT_RTP, p) for p in video[:3]]))
    seeds.append(encode([(FROM_STRANGER | PROTECT_RTP, video[1]), (0, b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\0" * 12),
                         (0, b"\x16\xfe\xfd" + b"\0" * 10), (0, b"\x80" * 30)]))
    return seeds


def dtls_seeds() -> list[bytes]:
    """Datagrams for a server after the ClientHellos: a real client's second flight, and records
    with fragments, oversized lengths and unknown content types; alerts and data once connected."""
    from callsgw.dtls.connection import DtlsConnection, DtlsRole
    from fuzz.fuzz_dtls_records import CLIENT, CONNECTED, NO_HELLO, _setup, encode, gateway

    s = _setup()
    mux, _ = gateway()
    client = DtlsConnection(DtlsRole.CLIENT, s["client_cert"], s["server_cert"].fingerprint)
    flights = []
    for _ in range(4):  # CH, HVR, CH+cookie, server flight, client flight
        out = client.datagrams_to_send()
        flights.append(out)
        for d in out:
            mux.receive(d, CLIENT, 0.0)
        for d, _ in mux.datagrams_to_send():
            client.receive_datagram(d, 0.0)
    second = flights[2]
    client.close()
    alert = client.datagrams_to_send()

    def record(ctype: int, body: bytes, epoch: int = 0, seq: int = 5, length: int | None = None) -> bytes:
        return (bytes([ctype]) + b"\xfe\xfd" + struct.pack("!HHI", epoch, seq >> 32, seq & 0xFFFFFFFF)
                + struct.pack("!H", len(body) if length is None else length) + body)

    def handshake(msg_type: int, body: bytes, total: int, seq: int, offset: int) -> bytes:
        return bytes([msg_type]) + total.to_bytes(3, "big") + struct.pack("!H", seq) + offset.to_bytes(3, "big") \
            + len(body).to_bytes(3, "big") + body

    cert_fragment = record(22, handshake(11, b"\0" * 40, 400, 2, 100), seq=3)
    seeds = [encode(0, second), encode(0, second[:1]), encode(0, [d[: len(d) // 2] for d in second])]
    seeds += [
        encode(0, [cert_fragment, record(22, handshake(11, b"\0" * 40, 400, 2, 0), seq=4)]),
        encode(0, [record(22, b"\x10\x00\x00\x21", length=0x4000)]),  # length beyond the datagram
        encode(0, [record(22, handshake(16, b"\x20" + b"\x41" * 32, 33, 3, 0), seq=6) * 3]),  # records in a row
        encode(0, [record(63, b"unknown content type"), record(24, b"\x01\x00\x10" + b"\0" * 16)]),  # heartbeat
        encode(0, [record(20, b"\x01"), record(22, b"\0" * 40, epoch=1, seq=0)]),  # CCS then encrypted
        encode(NO_HELLO, [record(21, b"\x02\x28"), b"\x16\xfe\xff" + b"\0" * 10]),
        encode(CONNECTED, alert),
        encode(CONNECTED, [record(23, b"\0" * 40, epoch=1, seq=9), record(25, b"x" * 8, epoch=1)]),
        encode(CONNECTED, [record(22, handshake(1, b"\xfe\xfd" + b"\0" * 40, 42, 5, 0), epoch=1)]),  # renegotiation
        encode(CONNECTED, [record(23, b"\0" * 4000, epoch=1)]),  # oversized
    ]
    return seeds


def _only(names: list[str]) -> None:
    """Write the named targets' seeds only (the native and DTLS ones; the others as in main())."""
    packets = capture_packets()
    rtcp = rtcp_seeds()
    makers = {
        "srtp": lambda: srtp_seeds(packets, rtcp),
        "engine": lambda: engine_seeds(packets, rtcp),
        "dtls_records": dtls_seeds,
    }
    for name in names:
        print(f"{name}: {_write(name, makers[name]())} seeds")


def main() -> None:
    import sys

    if len(sys.argv) > 1:
        _only(sys.argv[1:])
        return
    packets = capture_packets()
    rtp_seeds = packets + [s for p in packets[:3] for s in with_extensions(p)]
    rtcp = rtcp_seeds()
    stun = stun_seeds()
    to_gateway, to_client = sdp_seeds()
    counts = {
        "rtp": _write("rtp", rtp_seeds),
        "rtcp": _write("rtcp", rtcp),
        "stun": _write("stun", stun),
        "demux": _write("demux", rtp_seeds[:6] + rtcp[:6] + stun + [b"\x16\xfe\xfd" + b"\0" * 10, b"\x40\x00\x00\x04abcd"]),
        "sdp_offer": _write("sdp_offer", to_gateway),
        "client_sdp": _write("client_sdp", to_client),
        "signaling": _write("signaling", signaling_seeds()),
        "tokens": _write("tokens", token_seeds()),
        "negotiation": _write("negotiation", negotiation_seeds(to_client[2], to_client[0])),
        "capture": _write("capture", capture_seeds(packets)),
        "whip": _write("whip", whip_seeds()),
        "srtp": _write("srtp", srtp_seeds(packets, rtcp)),
        "engine": _write("engine", engine_seeds(packets, rtcp)),
        "dtls_records": _write("dtls_records", dtls_seeds()),
    }
    for name, n in counts.items():
        print(f"{name}: {n} seeds")


if __name__ == "__main__":
    main()
