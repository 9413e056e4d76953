"""SRTP and SRTCP unprotect (RFC 3711, RFC 7714) in the native core, through ``callsgw.srtp.Session``.

Input: one flags byte, then packets, each as a 2-byte big-endian length and that many bytes (a
short last packet takes what is left). Flags: bit 0 picks the profile (0 AEAD_AES_128_GCM,
1 AES128_CM_HMAC_SHA1_80), bit 1 SRTCP instead of SRTP, bit 2 "plain": the packets are RTP/RTCP
that a reference sender session protects first, so that the receiver's authenticated paths (header
extensions, CSRCs, padding, index and ROC estimation, replay window) see fuzzed contents. Without
bit 2 the packets go to the receiver as they are; the seed corpus holds packets protected under
the same keys, so mutations of them reach past the tag check where the mutated bytes are not
authenticated, and fail it otherwise.

Every packet list is unprotected twice, by two fresh receiver sessions: packet by packet
(``unprotect``/``unprotect_rtcp``) and in one batch (``unprotect_batch``/``unprotect_rtcp_batch``).
Documented: the per-packet API raises only ``SrtpError`` subclasses, the batch API raises nothing
for a bad packet. Checked: both APIs agree on every packet (status and plaintext), and in plain
mode a packet the sender protected comes back as it was, or is refused as a replay.
"""

from __future__ import annotations

import numpy as np

from callsgw.srtp import Profile, Session, SrtpError, Status

KEYS = {  # master key and salt per profile (RFC 5764 section 4.2 lengths)
    Profile.AEAD_AES_128_GCM: (bytes(range(16)), bytes(range(0x40, 0x4C))),
    Profile.AES128_CM_HMAC_SHA1_80: (bytes(range(0x10, 0x20)), bytes(range(0x50, 0x5E))),
}
PROFILES = (Profile.AEAD_AES_128_GCM, Profile.AES128_CM_HMAC_SHA1_80)
MAX_PACKETS = 8
REPLAYS = (Status.REPLAY, Status.REPLAY_OLD)


def packets_of(body: bytes) -> list[bytes]:
    out = []
    while body and len(out) < MAX_PACKETS:
        n = int.from_bytes(body[:2], "big")
        out.append(body[2 : 2 + n])
        body = body[2 + n :]
    return out


def encode(flags: int, packets: list[bytes]) -> bytes:
    """An input for this target (the corpus maker and the tests use it)."""
    return bytes([flags]) + b"".join(len(p).to_bytes(2, "big") + p for p in packets)


def sender(profile: Profile) -> Session:
    key, salt = KEYS[profile]
    return Session(profile, key, salt, allow_repeat_tx=True)


def receiver(profile: Profile) -> Session:
    key, salt = KEYS[profile]
    return Session(profile, key, salt, replay_window=64, max_streams=4)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    profile, rtcp, plain = PROFILES[flags & 1], bool(flags & 2), bool(flags & 4)
    packets = packets_of(data[1:])
    originals: list[bytes | None] = [None] * len(packets)
    if plain:
        tx = sender(profile)
        protect = tx.protect_rtcp if rtcp else tx.protect
        wire = []
        for i, packet in enumerate(packets):
            try:
                wire.append(protect(packet))
                originals[len(wire) - 1] = packet
            except SrtpError:
                continue
        packets = wire
        originals = originals[: len(wire)]
    if not packets:
        return

    one = receiver(profile)
    unprotect = one.unprotect_rtcp if rtcp else one.unprotect
    per_packet: list[tuple[int, bytes | None]] = []
    for packet in packets:
        try:
            per_packet.append((Status.OK, unprotect(packet)))
        except SrtpError as exc:
            assert exc.status is not None and exc.status != Status.OK, f"SrtpError without a status: {exc!r}"
            per_packet.append((int(exc.status), None))

    many = receiver(profile)
    offsets = np.zeros(len(packets), np.uint32)
    lengths = np.zeros(len(packets), np.uint32)
    pos = 0
    for i, packet in enumerate(packets):
        offsets[i], lengths[i] = pos, len(packet)
        pos += len(packet)
    buf = bytearray(b"".join(packets))
    status = (many.unprotect_rtcp_batch if rtcp else many.unprotect_batch)(buf, offsets, lengths)
    assert len(status) == len(packets)

    for i, (st, plaintext) in enumerate(per_packet):
        assert int(status[i]) == st, f"packet {i}: batch status {Status(int(status[i])).name}, per-packet {Status(st).name}"
        if st == Status.OK:
            batch_out = bytes(buf[int(offsets[i]) : int(offsets[i]) + int(lengths[i])])
            assert batch_out == plaintext, f"packet {i}: batch and per-packet plaintexts differ"
            assert len(plaintext) < len(packets[i])
        if plain:
            if st == Status.OK:
                assert plaintext == originals[i], f"packet {i}: unprotect(protect(p)) != p"
            else:
                assert st in REPLAYS or (st == Status.STREAM_LIMIT), (
                    f"packet {i}: the sender protected it, the receiver refused it: {Status(st).name}")
