"""RFC 3711 Appendix B and RFC 7714 sections 16-17 test vectors."""

import pytest

from callsgw.srtp import AuthenticationError, PolicyError, Profile, Session
from tests.packets import rtp
from tests.vectors import rfc_vectors as V

CM = Profile.AES128_CM_HMAC_SHA1_80
GCM = Profile.AEAD_AES_128_GCM


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_rfc3711_b2_aes_cm_keystream():
    """B.2: with SSRC 0, SEQ 0, ROC 0, the payload is XORed with this keystream."""
    s = Session._from_session_keys(CM, h(V.RFC3711_B2_SESSION_KEY), h(V.RFC3711_B2_SESSION_SALT), bytes(20))
    payload = bytes(48)
    out = s.protect(rtp(0, 0, payload, pt=0))
    keystream = out[12 : 12 + 48]
    assert keystream == h(V.RFC3711_B2_KEYSTREAM_FIRST_3_BLOCKS)


def test_rfc3711_b3_key_derivation():
    """B.3: a session from the master key must equal one from the derived keys."""
    derived = Session._from_session_keys(
        CM,
        h(V.RFC3711_B3_CIPHER_KEY),
        h(V.RFC3711_B3_CIPHER_SALT),
        h(V.RFC3711_B3_AUTH_KEY)[:20],  # HMAC-SHA1 uses n_a = 160 bits
    )
    master = Session(CM, h(V.RFC3711_B3_MASTER_KEY), h(V.RFC3711_B3_MASTER_SALT))
    for seq in (1, 2, 3):
        pkt = rtp(seq, 0xCAFEBABE, bytes(range(100)))
        assert master.protect(pkt) == derived.protect(pkt)


def test_rfc3711_b3_wrong_derivation_differs():
    """The comparison above can fail: a wrong auth key gives another tag."""
    wrong = Session._from_session_keys(CM, h(V.RFC3711_B3_CIPHER_KEY), h(V.RFC3711_B3_CIPHER_SALT), bytes(20))
    master = Session(CM, h(V.RFC3711_B3_MASTER_KEY), h(V.RFC3711_B3_MASTER_SALT))
    pkt = rtp(1, 1, b"x" * 20)
    assert master.protect(pkt) != wrong.protect(pkt)


def gcm_session():
    return Session._from_session_keys(GCM, h(V.RFC7714_16_1_KEY), h(V.RFC7714_16_SALT))


def test_rfc7714_16_1_1_encryption():
    assert gcm_session().protect(h(V.RFC7714_16_1_PLAIN_PACKET)) == h(V.RFC7714_16_1_SRTP_PACKET)


def test_rfc7714_16_1_2_decryption():
    out = gcm_session().unprotect(h(V.RFC7714_16_1_2_SRTP_PACKET))
    assert out == h(V.RFC7714_16_1_PLAIN_PACKET)
    assert out[12:] == h(V.RFC7714_16_1_2_DECRYPTED_PAYLOAD)


def rtcp_session():
    return Session._from_session_keys(GCM, h(V.RFC7714_17_KEY), h(V.RFC7714_17_SALT))


def test_rfc7714_17_1_srtcp_decryption():
    out = rtcp_session().unprotect_rtcp(h(V.RFC7714_17_1_SRTCP_PACKET))
    assert out == h(V.RFC7714_17_1_PLAIN_PACKET)


def test_rfc7714_17_1_srtcp_encryption_at_index():
    """Protect reaches the vector's SRTCP index 0x5d4 after 0x5d4 earlier packets."""
    s = rtcp_session()
    plain = h(V.RFC7714_17_1_PLAIN_PACKET)
    for _ in range(int(V.RFC7714_17_SRTCP_INDEX, 16)):
        s.protect_rtcp(plain)
    assert s.protect_rtcp(plain) == h(V.RFC7714_17_1_SRTCP_PACKET)


def test_rfc7714_17_3_unencrypted_srtcp_is_refused():
    """17.3 is a valid E=0 (authentication-only) packet: it authenticates, and
    is then refused because the contract makes confidentiality mandatory."""
    with pytest.raises(PolicyError):
        rtcp_session().unprotect_rtcp(h(V.RFC7714_17_3_TAGGED_PACKET))
    forged = bytearray(h(V.RFC7714_17_3_TAGGED_PACKET))
    forged[20] ^= 1
    with pytest.raises(AuthenticationError):
        rtcp_session().unprotect_rtcp(bytes(forged))
