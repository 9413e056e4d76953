"""DTLS 1.2 core: handshakes pumped against each other on a simulated clock.

Negative cases use :class:`RawPeer`, a deliberately permissive pyOpenSSL
endpoint. Every negative probe is first shown to complete against another
permissive RawPeer, so a refusal by callsgw cannot be blamed on the probe
being unable to speak the suite, profile or version it offers.

OpenSSL's retransmission timer reads the wall clock, so the loss tests sleep
for real (about four seconds in total).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import time
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL, crypto

from callsgw.dtls import (
    MANDATED_CIPHERS,
    MANDATED_SRTP_PROFILES,
    MAX_DATAGRAM_SIZE,
    MAX_HANDSHAKE_BYTES,
    MAX_HANDSHAKE_DATAGRAMS,
    MAX_QUEUED_DATAGRAMS,
    MTU,
    ConnectionClosed,
    DtlsCertificate,
    DtlsConnection,
    DtlsPolicy,
    DtlsRole,
    DtlsState,
    FailureReason,
    HandshakeCompleted,
    HandshakeFailed,
    fingerprint_digest,
    fingerprint_of_der,
    iana_cipher_name,
    parse_fingerprint,
)
from callsgw.dtls.connection import SRTP_EXPORTER_LABEL
from callsgw.srtp import Profile
from tests.packets import rtcp_sr, rtp

DTLS1_0, DTLS1_2 = 0xFEFF, 0xFEFD
GCM, CM80 = Profile.AEAD_AES_128_GCM, Profile.AES128_CM_HMAC_SHA1_80
MANDATED_SRTP_TEXT = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"
CONTENT_ALERT, CONTENT_HANDSHAKE = 21, 22
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_HELLO_VERIFY_REQUEST = 1, 2, 3

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
OTHER_CERT = DtlsCertificate.generate()


# -- helpers -------------------------------------------------------------------


class RawPeer:
    """A permissive pyOpenSSL DTLS endpoint with DtlsConnection's pump interface.

    It speaks whatever it is configured with and accepts any peer certificate.
    """

    def __init__(
        self,
        role: str,
        *,
        ciphers: bytes = b":".join(c.encode() for c in MANDATED_CIPHERS),
        srtp: bytes | None = MANDATED_SRTP_TEXT,
        versions: tuple[int, int] = (DTLS1_2, DTLS1_2),
        certificate=None,  # anything with install(context), e.g. a DtlsCertificate
        require_certificate: bool = True,
        now: float = 0.0,
    ):
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(versions[0])
        ctx.set_max_proto_version(versions[1])
        ctx.set_cipher_list(ciphers)
        if srtp is not None:
            ctx.set_tlsext_use_srtp(srtp)
        if certificate is not None:
            certificate.install(ctx)
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if require_certificate else 0)
        ctx.set_verify(mode, lambda *args: True)
        ctx.set_options(SSL.OP_NO_QUERY_MTU)
        self.ssl = SSL.Connection(ctx, None)
        self.ssl.set_ciphertext_mtu(MTU)
        if role == "server":
            self.ssl.set_accept_state()
        else:
            self.ssl.set_connect_state()
        self.established = False
        self.error: str | None = None
        self.closed_by_peer = False
        self.sent: list[bytes] = []
        self._out: list[bytes] = []
        self._now = now
        self._step()

    @property
    def state(self) -> DtlsState:
        if self.error is not None:
            return DtlsState.FAILED
        return DtlsState.ESTABLISHED if self.established else DtlsState.HANDSHAKING

    def _step(self) -> None:
        try:
            if self.established:
                while True:
                    self.ssl.recv(65536)
            else:
                self.ssl.do_handshake()
                self.established = True
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.closed_by_peer = True
        except SSL.Error as exc:
            self.error = "; ".join(e[2] for e in exc.args[0]) if exc.args and exc.args[0] else str(exc)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = self.ssl.bio_read(65536)
            except SSL.WantReadError:
                return
            self._out.append(data)
            self.sent.append(data)

    def receive_datagram(self, data: bytes, now: float) -> None:
        self._now = now
        if self.error is None:
            self.ssl.bio_write(data)
            self._step()

    def get_timer(self) -> float | None:
        if self.state is not DtlsState.HANDSHAKING:
            return None
        remaining = self.ssl.DTLSv1_get_timeout()
        return None if remaining is None else self._now + remaining

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is DtlsState.HANDSHAKING:
            self.ssl.DTLSv1_handle_timeout()
            self._drain()

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def send_application_data(self, data: bytes) -> None:
        self.ssl.send(data)
        self._drain()


def pump(
    a, b, now: float = 0.0, *, loss=None, log=None, realtime: bool = False, limit: float = 120.0
) -> float:
    """Exchange datagrams between two sans-I/O peers on a simulated clock.

    ``loss(sender, index, datagram)`` returns True to drop the sender's
    ``index``-th datagram; ``log`` collects ``(sender, datagram)`` for every
    datagram sent, dropped or not. When nothing is in flight, time jumps to
    the earliest timer; with ``realtime`` the pump also sleeps that long, so
    that OpenSSL's wall-clock retransmission timer expires too. Returns ``now``.
    """
    sent = {id(a): 0, id(b): 0}
    end = now + limit
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                index = sent[id(src)]
                sent[id(src)] += 1
                if log is not None:
                    log.append((src, datagram))
                if loss is not None and loss(src, index, datagram):
                    continue
                dst.receive_datagram(datagram, now)
                moved = True
        if moved:
            continue
        if DtlsState.HANDSHAKING not in (a.state, b.state):
            return now
        timers = [t for t in (a.get_timer(), b.get_timer()) if t is not None]
        if not timers or now >= end:
            return now
        deadline = max(now, min(timers))
        if realtime:
            time.sleep(deadline - now)
        now = deadline
        for peer in (a, b):
            timer = peer.get_timer()
            if timer is not None and timer <= now:
                peer.handle_timer(now)


def events(conn) -> list:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def only_event(conn, kind):
    evs = events(conn)
    assert len(evs) == 1 and isinstance(evs[0], kind), evs
    return evs[0]


def make_pair(server_policy=DtlsPolicy(), client_policy=DtlsPolicy(), now: float = 0.0):
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.sdp_fingerprint, server_policy, now)
    client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, SERVER_CERT.fingerprint, client_policy, now)
    return server, client


def handshake(server_policy=DtlsPolicy(), client_policy=DtlsPolicy()):
    server, client = make_pair(server_policy, client_policy)
    pump(client, server)
    return only_event(server, HandshakeCompleted), only_event(client, HandshakeCompleted)


def records(datagram: bytes) -> list[tuple[int, bytes]]:
    """(content type, fragment) of each DTLS record (RFC 6347 section 4.1)."""
    out, offset = [], 0
    while offset + 13 <= len(datagram):
        length = int.from_bytes(datagram[offset + 11 : offset + 13], "big")
        out.append((datagram[offset], datagram[offset + 13 : offset + 13 + length]))
        offset += 13 + length
    return out


def handshake_types(datagram: bytes) -> list[int]:
    return [frag[0] for ctype, frag in records(datagram) if ctype == CONTENT_HANDSHAKE and frag]


def client_hello_fields(datagram: bytes) -> tuple[bytes, bytes]:
    """(client_version, cookie) of an unfragmented ClientHello (RFC 6347 4.2.1)."""
    ctype, frag = records(datagram)[0]
    assert ctype == CONTENT_HANDSHAKE and frag[0] == HS_CLIENT_HELLO
    body = frag[12:]  # DTLS handshake header: type, length, seq, frag offset, frag length
    version = body[:2]
    session_id_len = body[34]
    cookie_at = 35 + session_id_len
    return version, body[cookie_at + 1 : cookie_at + 1 + body[cookie_at]]


def is_fatal_alert(datagram: bytes) -> bool:
    """A plaintext (epoch 0) fatal alert record (RFC 5246 section 7.2)."""
    return any(ctype == CONTENT_ALERT and frag[:1] == b"\x02" for ctype, frag in records(datagram))


def last_sent(log, sender) -> bytes:
    return [datagram for src, datagram in log if src is sender][-1]


def probe_server(**raw_client_options) -> tuple[DtlsConnection, RawPeer, list]:
    """Our server against a RawPeer client that presents CLIENT_CERT."""
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    client = RawPeer("client", certificate=CLIENT_CERT, **raw_client_options)
    log = []
    pump(client, server, log=log)
    return server, client, log


def control_pair(server_options: dict, client_options: dict) -> tuple[RawPeer, RawPeer]:
    """Two permissive RawPeers: the positive control for a probe."""
    server = RawPeer("server", certificate=SERVER_CERT, **server_options)
    client = RawPeer("client", certificate=CLIENT_CERT, **client_options)
    pump(client, server)
    return server, client


# -- successful handshakes -------------------------------------------------------


def test_handshake_completes_with_the_preferred_suite_and_profile():
    server_done, client_done = handshake()
    for done, role, local, remote in (
        (server_done, "server", SERVER_CERT, CLIENT_CERT),
        (client_done, "client", CLIENT_CERT, SERVER_CERT),
    ):
        record = done.record
        assert record.version == "DTLS 1.2"
        assert record.role == role
        assert record.cipher_openssl == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert record.cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        assert record.srtp_profile == "SRTP_AEAD_AES_128_GCM"
        assert record.key_exchange_group in ("x25519", "secp256r1", "prime256v1")
        assert record.local_fingerprint == local.fingerprint
        assert record.remote_fingerprint == remote.fingerprint
        assert record.fingerprint_matched is True
        assert record.started_at == 0.0 and record.completed_at == 0.0
        assert done.keys.profile is GCM


def test_state_timer_and_late_datagrams_after_completion():
    server, client = make_pair(now=5.0)
    assert server.state is client.state is DtlsState.HANDSHAKING
    assert server.get_timer() == 5.0 + DtlsPolicy().handshake_timeout
    pump(client, server, 5.0)
    assert server.state is client.state is DtlsState.ESTABLISHED
    assert server.get_timer() is None and client.get_timer() is None
    assert only_event(server, HandshakeCompleted).record.started_at == 5.0
    server.receive_datagram(os.urandom(100), 6.0)
    server.handle_timer(100.0)
    assert server.state is DtlsState.ESTABLISHED and events(server) == []


@pytest.mark.parametrize("profile", MANDATED_SRTP_PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("narrowed", ["server", "client", "both"])
def test_each_srtp_profile_is_negotiated_when_the_policy_is_narrowed(profile, narrowed):
    narrow = DtlsPolicy(srtp_profiles=(profile,))
    server_done, client_done = handshake(
        narrow if narrowed != "client" else DtlsPolicy(),
        narrow if narrowed != "server" else DtlsPolicy(),
    )
    assert server_done.keys.profile is client_done.keys.profile is profile
    assert server_done.record.srtp_profile == client_done.record.srtp_profile == profile.dtls_name


@pytest.mark.parametrize("cipher", MANDATED_CIPHERS)
@pytest.mark.parametrize("narrowed", ["server", "client", "both"])
def test_each_cipher_is_negotiated_when_the_policy_is_narrowed(cipher, narrowed):
    narrow = DtlsPolicy(ciphers=(cipher,))
    server_done, client_done = handshake(
        narrow if narrowed != "client" else DtlsPolicy(),
        narrow if narrowed != "server" else DtlsPolicy(),
    )
    assert server_done.record.cipher_openssl == client_done.record.cipher_openssl == cipher
    assert server_done.record.cipher_suite == iana_cipher_name(cipher)


def test_server_preference_wins_for_profile_and_cipher():
    # The client prefers CM_SHA1_80 and AES256-SHA, like Chromium prefers CM.
    client_policy = DtlsPolicy(ciphers=MANDATED_CIPHERS[::-1], srtp_profiles=(CM80, GCM))
    server_done, client_done = handshake(DtlsPolicy(), client_policy)
    for done in (server_done, client_done):
        assert done.keys.profile is GCM
        assert done.record.cipher_openssl == "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("profile", MANDATED_SRTP_PROFILES, ids=lambda p: p.name)
def test_keys_match_crosswise_and_media_flows(profile):
    policy = DtlsPolicy(srtp_profiles=(profile,))
    server_done, client_done = handshake(policy, policy)
    s, c = server_done.keys, client_done.keys
    assert (len(c.local_key), len(c.local_salt)) == (profile.key_length, profile.salt_length)
    assert c.local_key == s.remote_key and c.local_salt == s.remote_salt
    assert c.remote_key == s.local_key and c.remote_salt == s.local_salt
    assert c.local_key != c.remote_key
    server_tx, server_rx = s.sessions()
    client_tx, client_rx = c.sessions()
    for seq in range(3):
        packet = rtp(seq, 0x1234, b"client media %d" % seq)
        assert server_rx.unprotect(client_tx.protect(packet)) == packet
        packet = rtp(seq, 0x5678, b"server media %d" % seq)
        assert client_rx.unprotect(server_tx.protect(packet)) == packet
    report = rtcp_sr(0x1234)
    assert server_rx.unprotect_rtcp(client_tx.protect_rtcp(report)) == report


@pytest.mark.parametrize("profile", MANDATED_SRTP_PROFILES, ids=lambda p: p.name)
def test_key_split_follows_rfc5764_against_openssl_exporter(profile):
    # The RawPeer client exports with OpenSSL directly; RFC 5764 section 4.2:
    # client_write_key | server_write_key | client_write_salt | server_write_salt.
    server = DtlsConnection(
        DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint, DtlsPolicy(srtp_profiles=(profile,))
    )
    client = RawPeer("client", certificate=CLIENT_CERT)
    pump(client, server)
    keys = only_event(server, HandshakeCompleted).keys
    k, s = profile.key_length, profile.salt_length
    material = client.ssl.export_keying_material(SRTP_EXPORTER_LABEL, 2 * (k + s))
    assert keys.remote_key == material[:k]
    assert keys.local_key == material[k : 2 * k]
    assert keys.remote_salt == material[2 * k : 2 * k + s]
    assert keys.local_salt == material[2 * k + s :]


def test_hello_verify_request_cookie_round():
    server, client = make_pair()
    (hello1,) = client.datagrams_to_send()
    assert client_hello_fields(hello1) == (b"\xfe\xfd", b"")
    server.receive_datagram(hello1, 0.0)
    (hvr,) = server.datagrams_to_send()
    assert hvr[0] == CONTENT_HANDSHAKE and handshake_types(hvr) == [HS_HELLO_VERIFY_REQUEST]
    hvr_body = records(hvr)[0][1][12:]
    cookie = hvr_body[3 : 3 + hvr_body[2]]
    assert len(cookie) == 32
    client.receive_datagram(hvr, 0.0)
    (hello2,) = client.datagrams_to_send()
    assert client_hello_fields(hello2)[1] == cookie
    # A ClientHello carrying another server's cookie gets no ServerHello.
    stranger = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    stranger.receive_datagram(hello2, 0.0)
    assert stranger.datagrams_to_send() == [] and stranger.state is DtlsState.HANDSHAKING
    server.receive_datagram(hello2, 0.0)
    assert HS_SERVER_HELLO in handshake_types(server.datagrams_to_send()[0])


def test_outgoing_datagrams_fit_the_mtu():
    server, client = make_pair()
    sizes = []

    def watch(sender, index, datagram):
        sizes.append(len(datagram))
        return False

    pump(client, server, loss=watch)
    assert server.state is DtlsState.ESTABLISHED
    assert sizes and max(sizes) <= MTU


# -- loss and retransmission (real time: OpenSSL's timer reads the wall clock) ---


def test_lost_flights_are_retransmitted():
    server, client = make_pair()

    def loss(sender, index, datagram):
        # The client's first ClientHello and its Certificate...Finished
        # flight (RFC 6347 section 4.2.4 flights 1 and 5), and the server's
        # ServerHello...ServerHelloDone flight (flight 4; its HelloVerifyRequest,
        # flight 2, is stateless and never retransmitted).
        return (sender is client and index in (0, 2)) or (sender is server and index == 1)

    started = time.monotonic()
    now = pump(client, server, loss=loss, realtime=True)
    assert server.state is client.state is DtlsState.ESTABLISHED
    assert 2.5 < now < 10 and time.monotonic() - started < 5
    assert only_event(server, HandshakeCompleted).record.completed_at == now


def test_lost_final_server_flight_is_retransmitted_after_completion():
    server, client = make_pair()
    final = []

    def loss(sender, index, datagram):
        if sender is server and datagram[0] == 20 and not final:  # ChangeCipherSpec + Finished
            final.append(datagram)
            return True
        return False

    now = pump(client, server, loss=loss, realtime=True)
    assert final and now >= 0.9
    assert server.state is client.state is DtlsState.ESTABLISHED
    # The server completed before its flight was lost, and answered the
    # client's retransmission from the established state.
    assert only_event(server, HandshakeCompleted).record.completed_at == 0.0
    assert only_event(client, HandshakeCompleted).record.completed_at == now


# -- negative probes -------------------------------------------------------------


@pytest.mark.parametrize(
    "cipher",
    ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-SHA256"],
)
def test_client_offering_only_other_suites_fails_with_no_shared_cipher(cipher):
    control_server, control_client = control_pair({"ciphers": cipher.encode()}, {"ciphers": cipher.encode()})
    assert control_client.established and control_client.ssl.get_cipher_name() == cipher

    server, client, log = probe_server(ciphers=cipher.encode())
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.NO_SHARED_CIPHER, failed
    assert is_fatal_alert(last_sent(log, server))
    assert client.error and "alert handshake failure" in client.error


def test_client_offering_no_common_srtp_profile_fails():
    srtp32 = b"SRTP_AES128_CM_SHA1_32"
    control_server, control_client = control_pair({"srtp": srtp32}, {"srtp": srtp32})
    assert control_client.established and control_client.ssl.get_selected_srtp_profile() == srtp32

    server, client, log = probe_server(srtp=srtp32)
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.NO_SHARED_SRTP_PROFILE, failed
    assert is_fatal_alert(last_sent(log, server))
    assert not client.established and client.error and "alert" in client.error


def test_client_without_use_srtp_fails():
    control_server, control_client = control_pair({"srtp": None}, {"srtp": None})
    assert control_client.established

    server, client, _ = probe_server(srtp=None)
    assert only_event(server, HandshakeFailed).reason is FailureReason.NO_SHARED_SRTP_PROFILE
    assert not client.established and client.error


def test_our_client_refuses_a_server_without_a_common_srtp_profile():
    srtp32 = b"SRTP_AES128_CM_SHA1_32"
    control_server, control_client = control_pair({"srtp": srtp32}, {"srtp": srtp32})
    assert control_server.established

    server = RawPeer("server", certificate=SERVER_CERT, srtp=srtp32)
    client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, SERVER_CERT.fingerprint)
    log = []
    pump(client, server, log=log)
    assert only_event(client, HandshakeFailed).reason is FailureReason.NO_SHARED_SRTP_PROFILE
    assert is_fatal_alert(last_sent(log, client))
    assert not server.established and server.error and "alert" in server.error


DTLS10_PROBE = {"versions": (DTLS1_0, DTLS1_0), "ciphers": b"ECDHE-ECDSA-AES256-SHA:@SECLEVEL=0"}


def test_dtls10_client_hello_fails_with_wrong_version():
    control_server, control_client = control_pair(DTLS10_PROBE, DTLS10_PROBE)
    assert control_client.established
    assert control_client.ssl.get_protocol_version_name() == "DTLSv1"

    server, client, log = probe_server(**DTLS10_PROBE)
    assert client_hello_fields(client.sent[0])[0] == b"\xfe\xff"  # the probe offered DTLS 1.0 only
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.WRONG_VERSION, failed
    assert is_fatal_alert(last_sent(log, server))
    assert client.error and "alert protocol version" in client.error


def test_our_client_refuses_a_dtls10_server():
    control_server, control_client = control_pair(DTLS10_PROBE, DTLS10_PROBE)
    assert control_server.established

    server = RawPeer("server", certificate=SERVER_CERT, **DTLS10_PROBE)
    client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, SERVER_CERT.fingerprint)
    pump(client, server)
    assert only_event(client, HandshakeFailed).reason is FailureReason.WRONG_VERSION
    assert not server.established


class OddCertificate:
    """A P-256 certificate whose notBefore has month 13: OpenSSL parses it,
    ``cryptography``'s strict parser refuses it."""

    def __init__(self):
        base = DtlsCertificate.generate()
        der = bytearray(base.der)
        at = der.index(b"\x17\x0d")  # the first UTCTime, notBefore
        der[at + 4 : at + 6] = b"13"
        self.der = bytes(der)
        self.key = base._private_key
        with pytest.raises(ValueError):
            x509.load_der_x509_certificate(self.der)
        self.x509 = crypto.load_certificate(crypto.FILETYPE_ASN1, self.der)

    def install(self, context: SSL.Context) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # a pyOpenSSL X509 object
            context.use_certificate(self.x509)
        context.use_privatekey(self.key)


def test_certificate_only_openssl_can_parse_gets_a_clean_fingerprint_verdict():
    odd = OddCertificate()
    # Pinned by its exact bytes it is accepted (validity is not the point of
    # a fingerprint); against another fingerprint it is a plain mismatch.
    cases = ((fingerprint_of_der(odd.der), HandshakeCompleted), (CLIENT_CERT.fingerprint, HandshakeFailed))
    for expected, outcome in cases:
        server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, expected)
        pump(RawPeer("client", certificate=odd), server)
        event = only_event(server, outcome)
        if outcome is HandshakeFailed:
            assert event.reason is FailureReason.FINGERPRINT_MISMATCH
        else:
            assert event.record.remote_fingerprint == fingerprint_of_der(odd.der)


def test_client_without_certificate_is_refused():
    # Control: a server that does not insist completes without a client certificate.
    control_server = RawPeer("server", certificate=SERVER_CERT, require_certificate=False)
    control_client = RawPeer("client")
    pump(control_client, control_server)
    assert control_server.established and control_server.ssl.get_peer_certificate() is None

    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    client = RawPeer("client")
    pump(client, server)
    assert only_event(server, HandshakeFailed).reason is FailureReason.NO_CERTIFICATE
    assert not client.established and client.error


@pytest.mark.parametrize("checker", ["server", "client"])
def test_wrong_fingerprint_fails_both_sides_with_an_alert(checker):
    # Control: the same certificates with the right fingerprints complete.
    handshake()

    wrong = OTHER_CERT.fingerprint
    server = DtlsConnection(
        DtlsRole.SERVER, SERVER_CERT, wrong if checker == "server" else CLIENT_CERT.fingerprint
    )
    client = DtlsConnection(
        DtlsRole.CLIENT, CLIENT_CERT, wrong if checker == "client" else SERVER_CERT.fingerprint
    )
    log = []
    pump(client, server, log=log)
    checking, peer = (server, client) if checker == "server" else (client, server)
    failed = only_event(checking, HandshakeFailed)
    assert failed.reason is FailureReason.FINGERPRINT_MISMATCH
    assert wrong in failed.detail
    assert is_fatal_alert(last_sent(log, checking))
    peer_failed = only_event(peer, HandshakeFailed)
    assert peer_failed.reason is FailureReason.PEER_ALERT and "alert" in peer_failed.detail
    assert server.state is client.state is DtlsState.FAILED


# -- operator policy -------------------------------------------------------------


def test_policy_defaults_are_the_mandated_sets():
    policy = DtlsPolicy()
    assert policy.ciphers == MANDATED_CIPHERS
    assert policy.srtp_profiles == (GCM, CM80)
    assert policy.handshake_timeout == 30.0
    assert policy.openssl_cipher_list == b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-SHA"
    assert policy.openssl_srtp_profiles == MANDATED_SRTP_TEXT


def test_policy_narrowing_keeps_the_given_order():
    policy = DtlsPolicy(
        ciphers=["TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        srtp_profiles=["SRTP_AES128_CM_SHA1_80", GCM],
        handshake_timeout=10,
    )
    assert policy.ciphers == ("ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert policy.srtp_profiles == (CM80, GCM)
    assert DtlsPolicy(srtp_profiles=("AEAD_AES_128_GCM",)).srtp_profiles == (GCM,)
    assert policy.validate() is policy


@pytest.mark.parametrize(
    "kwargs, offending",
    [
        ({"ciphers": MANDATED_CIPHERS + ("ECDHE-ECDSA-AES256-GCM-SHA384",)}, "ECDHE-ECDSA-AES256-GCM-SHA384"),
        ({"ciphers": ("ECDHE-ECDSA-CHACHA20-POLY1305",)}, "ECDHE-ECDSA-CHACHA20-POLY1305"),
        ({"ciphers": ("ALL",)}, "ALL"),
        ({"ciphers": ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",)}, "SHA384"),
        ({"srtp_profiles": (GCM, "SRTP_AES128_CM_SHA1_32")}, "SRTP_AES128_CM_SHA1_32"),
        ({"srtp_profiles": ("SRTP_AEAD_AES_256_GCM",)}, "SRTP_AEAD_AES_256_GCM"),
        ({"srtp_profiles": (0x0002,)}, "2"),
    ],
)
def test_policy_cannot_be_widened(kwargs, offending):
    with pytest.raises(ValueError) as exc:
        DtlsPolicy(**kwargs)
    message = str(exc.value)
    assert offending in message and "allowed" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ciphers": ()},
        {"srtp_profiles": []},
        {"ciphers": "ECDHE-ECDSA-AES256-SHA"},
        {"ciphers": MANDATED_CIPHERS[:1] * 2},
        {"srtp_profiles": (GCM, "SRTP_AEAD_AES_128_GCM")},
        {"handshake_timeout": 0},
        {"handshake_timeout": float("inf")},
        {"handshake_timeout": "30"},
    ],
)
def test_policy_rejects_empty_repeated_or_malformed_values(kwargs):
    with pytest.raises(ValueError):
        DtlsPolicy(**kwargs)


def test_iana_names():
    assert iana_cipher_name("ECDHE-ECDSA-AES128-GCM-SHA256") == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    assert iana_cipher_name("ECDHE-ECDSA-AES256-SHA") == "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
    with pytest.raises(ValueError, match="not allowed"):
        iana_cipher_name("ECDHE-ECDSA-AES256-GCM-SHA384")


# -- certificates and fingerprints -----------------------------------------------


def test_generated_certificate_is_self_signed_p256_with_short_validity():
    cert = DtlsCertificate.generate()
    issued = cert.certificate
    key = issued.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert issued.issuer == issued.subject
    issued.verify_directly_issued_by(issued)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert issued.not_valid_before_utc < now - datetime.timedelta(hours=1)
    assert now + datetime.timedelta(days=29) < issued.not_valid_after_utc < now + datetime.timedelta(days=31)
    assert issued.serial_number != DtlsCertificate.generate().certificate.serial_number
    assert cert.algorithm == "sha-256"
    assert "PRIVATE" not in repr(cert) and cert.fingerprint in repr(cert)


def test_fingerprint_is_sha256_of_der_in_sdp_form():
    cert = SERVER_CERT
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(cert.der).digest())
    assert cert.fingerprint == expected == fingerprint_of_der(cert.der)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert.fingerprint)
    assert cert.sdp_fingerprint == "sha-256 " + expected


def test_parse_fingerprint_accepts_any_case():
    value = SERVER_CERT.fingerprint
    assert parse_fingerprint("sha-256 " + value) == value
    assert parse_fingerprint("SHA-256 " + value.lower()) == value
    assert parse_fingerprint("  sha-256   " + value + " ") == value
    assert fingerprint_digest(value.lower()) == hashlib.sha256(SERVER_CERT.der).digest()
    assert fingerprint_digest("sha-256 " + value) == fingerprint_digest(value)


@pytest.mark.parametrize(
    "value",
    [
        "sha-1 " + ":".join(["AB"] * 20),
        "sha-384 " + ":".join(["AB"] * 48),
        "sha-512 " + ":".join(["AB"] * 64),
        "md5 " + ":".join(["AB"] * 16),
        "sha-256 " + ":".join(["AB"] * 31),
        "sha-256 " + ":".join(["AB"] * 33),
        "sha-256 " + ":".join(["GG"] * 32),
        "sha-256 " + "AB" * 32,
        "sha-256 " + ":".join(["ABC"] * 32),
        "sha-256",
        "",
        "sha-256 " + ":".join(["AB"] * 32) + " extra",
    ],
)
def test_parse_fingerprint_rejects_other_algorithms_and_malformed_values(value):
    with pytest.raises(ValueError):
        parse_fingerprint(value)
    with pytest.raises(ValueError):
        DtlsConnection(DtlsRole.SERVER, SERVER_CERT, value)


def test_rotation_new_connections_use_the_new_certificate():
    rotated = DtlsCertificate.generate()
    old_server, old_client = make_pair()
    pump(old_client, old_server)
    new_server = DtlsConnection(DtlsRole.SERVER, rotated, CLIENT_CERT.fingerprint)
    new_client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, rotated.fingerprint)
    pump(new_client, new_server)
    assert only_event(new_client, HandshakeCompleted).record.remote_fingerprint == rotated.fingerprint
    assert only_event(old_client, HandshakeCompleted).record.remote_fingerprint == SERVER_CERT.fingerprint
    # The old association is untouched by the rotation and still closes cleanly.
    old_client.close()
    pump(old_client, old_server)
    assert isinstance(events(old_server)[-1], ConnectionClosed)


# -- bounded buffers and hostile input ---------------------------------------------


def test_oversize_and_non_dtls_datagrams_are_dropped():
    server, client = make_pair()
    server.receive_datagram(b"\x16" + os.urandom(MAX_DATAGRAM_SIZE), 0.0)
    server.receive_datagram(b"", 0.0)
    server.receive_datagram(b"\x00\x01" + os.urandom(40), 0.0)  # STUN, RFC 7983
    server.receive_datagram(b"\x80" + os.urandom(40), 0.0)  # RTP
    assert server.dropped_incoming == 4
    assert server.datagrams_to_send() == [] and events(server) == []
    pump(client, server)
    assert server.state is DtlsState.ESTABLISHED


def test_garbage_flood_fails_the_handshake_without_raising():
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    for i in range(MAX_HANDSHAKE_DATAGRAMS + 100):
        server.receive_datagram(bytes([22]) + os.urandom(100), 0.0)
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.RESOURCE_LIMIT
    assert server.state is DtlsState.FAILED and server.get_timer() is None


def test_byte_budget_fails_the_handshake():
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    count = 0
    while server.state is DtlsState.HANDSHAKING:
        server.receive_datagram(bytes([22]) + os.urandom(MAX_DATAGRAM_SIZE - 1), 0.0)
        count += 1
    assert count == MAX_HANDSHAKE_BYTES // MAX_DATAGRAM_SIZE + 1
    assert only_event(server, HandshakeFailed).reason is FailureReason.RESOURCE_LIMIT


def test_outgoing_queue_is_capped():
    # White-box: a caller that never drains. The queue keeps the newest.
    client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, SERVER_CERT.fingerprint)
    for i in range(MAX_QUEUED_DATAGRAMS + 10):
        client._queue(b"\x16%d" % i)
    queued = client.datagrams_to_send()
    assert len(queued) == MAX_QUEUED_DATAGRAMS and queued[-1] == b"\x16%d" % (MAX_QUEUED_DATAGRAMS + 9)
    assert client.dropped_outgoing == 11  # ten fillers and the ClientHello


def test_truncated_copies_of_every_datagram_do_not_break_the_handshake():
    server, client = make_pair()
    originals = []

    def inject(sender, index, datagram):
        originals.append(datagram)
        peer = server if sender is client else client
        for cut in (1, 5, 12, 13, 14, 25, len(datagram) // 2, len(datagram) - 1):
            peer.receive_datagram(datagram[:cut], 0.0)
        return False

    pump(client, server, loss=inject)
    assert len(originals) >= 5
    assert server.state is client.state is DtlsState.ESTABLISHED


@functools.cache
def _transcript() -> tuple[bytes, ...]:
    """The six datagrams of one handshake, in order: ClientHello,
    HelloVerifyRequest, ClientHello with cookie, the server's flight, the
    client's flight, the server's ChangeCipherSpec and Finished."""
    server, client = make_pair()
    log = []
    pump(client, server, log=log)
    return tuple(datagram for _, datagram in log)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 5),
    cut=st.integers(0, 2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), max_size=4),
    junk=st.binary(max_size=64),
)
def test_mutated_datagrams_never_raise(index, cut, flips, junk):
    # Just before the index-th datagram of a fresh handshake, its receiver
    # also gets a truncated, bit-flipped copy of the same message from
    # another handshake.
    datagram = bytearray(_transcript()[index][:cut] + junk)
    for position, mask in flips:
        if datagram:
            datagram[position % len(datagram)] ^= mask
    server, client = make_pair()
    count = [0]

    def inject(sender, i, real):
        if count[0] == index:
            (server if sender is client else client).receive_datagram(bytes(datagram), 0.0)
        count[0] += 1
        return False

    pump(client, server, loss=inject)
    # Either the junk was discarded, or it failed a handshake. A peer that
    # fails after sending its Finished alerts the other, established, side,
    # which then ends with ConnectionClosed.
    for conn in (server, client):
        assert conn.state is not DtlsState.HANDSHAKING
        kinds = [type(event) for event in events(conn)]
        assert kinds in ([HandshakeCompleted], [HandshakeFailed], [HandshakeCompleted, ConnectionClosed])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=MAX_DATAGRAM_SIZE + 10), role=st.sampled_from(list(DtlsRole)))
def test_random_bytes_never_raise(data, role):
    remote = CLIENT_CERT if role is DtlsRole.SERVER else SERVER_CERT
    conn = DtlsConnection(role, SERVER_CERT, remote.fingerprint)
    conn.receive_datagram(data, 0.0)
    conn.handle_timer(0.5)
    assert conn.state in (DtlsState.HANDSHAKING, DtlsState.FAILED)


# -- timeout, close, application data --------------------------------------------


def test_no_peer_times_out_on_the_simulated_clock():
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint, now=100.0)
    assert server.get_timer() == 130.0
    server.handle_timer(129.9)
    assert server.state is DtlsState.HANDSHAKING
    server.handle_timer(130.0)
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.TIMEOUT
    assert server.get_timer() is None


def test_client_into_the_void_times_out_after_handshake_timeout():
    policy = DtlsPolicy(handshake_timeout=5.0)
    client = DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, SERVER_CERT.fingerprint, policy, now=10.0)
    assert len(client.datagrams_to_send()) == 1
    now = 10.0
    while client.state is DtlsState.HANDSHAKING:
        timer = client.get_timer()
        assert timer is not None and now <= timer <= 15.0
        now = timer
        client.handle_timer(now)
        client.datagrams_to_send()
    assert now == 15.0
    assert only_event(client, HandshakeFailed).reason is FailureReason.TIMEOUT


def test_close_notify_ends_the_association_on_both_sides():
    server, client = make_pair()
    pump(client, server)
    events(server), events(client)
    client.close()
    assert client.state is DtlsState.CLOSED
    (notify,) = client.datagrams_to_send()
    assert notify[0] == CONTENT_ALERT
    server.receive_datagram(notify, 1.0)
    closed = only_event(server, ConnectionClosed)
    assert closed.by_peer and closed.detail == "close_notify"
    assert server.state is DtlsState.CLOSED
    server.receive_datagram(notify, 2.0)
    assert events(server) == []


def test_close_during_the_handshake_abandons_it():
    server, client = make_pair()
    client.close()
    assert client.state is DtlsState.CLOSED and client.get_timer() is None
    client.receive_datagram(b"\x16" + bytes(40), 0.0)
    assert events(client) == []


def test_application_data_is_dropped():
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    client = RawPeer("client", certificate=CLIENT_CERT)
    pump(client, server)
    assert only_event(server, HandshakeCompleted)
    client.send_application_data(b"data channel bytes")
    for datagram in client.datagrams_to_send():
        server.receive_datagram(datagram, 1.0)
    assert server.state is DtlsState.ESTABLISHED and events(server) == []


def test_close_notify_from_openssl_peer_closes():
    server = DtlsConnection(DtlsRole.SERVER, SERVER_CERT, CLIENT_CERT.fingerprint)
    client = RawPeer("client", certificate=CLIENT_CERT)
    pump(client, server)
    events(server)
    client.ssl.shutdown()
    client._drain()
    for datagram in client.datagrams_to_send():
        server.receive_datagram(datagram, 1.0)
    assert server.state is DtlsState.CLOSED
    assert isinstance(only_event(server, ConnectionClosed), ConnectionClosed)


# -- no key material in reprs ------------------------------------------------------


def test_no_key_bytes_in_any_repr():
    for done in handshake():
        keys = done.keys
        secrets = [keys.local_key, keys.local_salt, keys.remote_key, keys.remote_salt]
        texts = [repr(done), str(done), repr(done.record), str(done.record), repr(keys), str(keys)]
        for secret in secrets:
            for form in (secret.hex(), secret.hex().upper(), repr(secret), str(list(secret))[1:-1]):
                for text in texts:
                    assert form not in text
        assert all(f.type in ("str", "str | None", "bool", "float") for f in dataclasses.fields(done.record))
        assert json.loads(json.dumps(done.record.as_dict())) == done.record.as_dict()
        assert "hidden" not in repr(done.record)
        assert "hidden" in repr(keys)
