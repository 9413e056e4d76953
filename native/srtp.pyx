# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""SRTP and SRTCP (RFC 3711, RFC 7714) on OpenSSL EVP, for callsgw.

Import it as ``callsgw.srtp``; this module is the native half of that facade.

Profiles (RFC 5764 section 4.1.2 and RFC 7714 section 14.2):

* AES128_CM_HMAC_SHA1_80: AES-128 in counter mode, HMAC-SHA1 tag of 80 bits.
* AEAD_AES_128_GCM: AES-128-GCM with a 128-bit tag.

A Session holds the keys of one direction of one DTLS association and covers
every SSRC seen in that direction (libsrtp's ssrc_any policies): streams are
created as packets of new SSRCs authenticate, up to ``max_streams``.

Security properties kept by this module:

* keys are derived once per session (key derivation rate 0) and wiped with
  OPENSSL_cleanse when no longer needed; no key ever leaves the C structs;
* tags are compared with CRYPTO_memcmp (constant time);
* the RTP index (rollover counter) is estimated per RFC 3711 section 3.3.1 and
  the replay window is updated only after a packet authenticates;
* protect refuses to reuse an (SSRC, index) pair under the session's key
  unless ``allow_repeat_tx`` is set;
* every input is bounds-checked before it is read; errors are status codes in
  C and exceptions (subclasses of SrtpError) in Python.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, calloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.buffer cimport (
    PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT, PyBUF_WRITABLE,
)

from callsgw._native.openssl cimport (
    EVP_CIPHER, EVP_MD, EVP_CIPHER_CTX, EVP_MD_CTX,
    EVP_CIPHER_fetch, EVP_MD_fetch, EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_ctrl, EVP_EncryptInit_ex, EVP_EncryptUpdate, EVP_EncryptFinal_ex,
    EVP_DecryptInit_ex, EVP_DecryptUpdate, EVP_DecryptFinal_ex,
    EVP_MD_CTX_new, EVP_MD_CTX_free, EVP_MD_CTX_copy_ex, EVP_DigestInit_ex,
    EVP_DigestUpdate, EVP_DigestFinal_ex, CRYPTO_memcmp, OPENSSL_cleanse,
    OpenSSL_version, OPENSSL_VERSION,
    EVP_CTRL_GCM_GET_TAG, EVP_CTRL_GCM_SET_TAG,
)

import os

import numpy as np

from callsgw.srtp_defs import (
    AuthenticationError, ReplayError, MalformedPacketError, StreamLimitError,
    KeyExhaustedError, PolicyError, SrtpError, Status, Profile,
)


OPENSSL_VERSION_TEXT = OpenSSL_version(OPENSSL_VERSION).decode()

cdef const EVP_CIPHER *AES_128_CTR = EVP_CIPHER_fetch(NULL, b"AES-128-CTR", NULL)
cdef const EVP_CIPHER *AES_128_GCM = EVP_CIPHER_fetch(NULL, b"AES-128-GCM", NULL)
cdef const EVP_MD *SHA1 = EVP_MD_fetch(NULL, b"SHA1", NULL)
if AES_128_CTR == NULL or AES_128_GCM == NULL or SHA1 == NULL:
    raise ImportError("OpenSSL (%s) lacks AES-128-CTR, AES-128-GCM or SHA1"
                      % OPENSSL_VERSION_TEXT)

cdef enum:
    HMAC_SHA1_LEN = 20
    SHA1_BLOCK = 64
    CM_TAG = 10
    GCM_TAG = 16
    SRTCP_TRAILER = 4              # E flag and 31-bit SRTCP index
    OP_PROTECT = 0
    OP_UNPROTECT = 1
    OP_PROTECT_RTCP = 2
    OP_UNPROTECT_RTCP = 3
    # RFC 3711 section 4.3.2 key derivation labels
    LABEL_RTP_ENC = 0
    LABEL_RTP_AUTH = 1
    LABEL_RTP_SALT = 2
    LABEL_RTCP_ENC = 3
    LABEL_RTCP_AUTH = 4
    LABEL_RTCP_SALT = 5
    SCRATCH_SIZE = SRTP_MAX_PACKET + 64

cdef extern from *:
    """
    #define CALLSGW_SRTCP_E_BIT 0x80000000u
    #define CALLSGW_SRTCP_INDEX_MASK 0x7fffffffu
    #define CALLSGW_ROC_MAX 0xffffffffu
    #define CALLSGW_HASH_MUL 2654435761u
    """
    const uint32_t SRTCP_E_BIT "CALLSGW_SRTCP_E_BIT"
    const uint32_t SRTCP_INDEX_MASK "CALLSGW_SRTCP_INDEX_MASK"
    const uint32_t ROC_MAX "CALLSGW_ROC_MAX"
    const uint32_t HASH_MUL "CALLSGW_HASH_MUL"

cdef uint8_t ZEROS[64]
memset(ZEROS, 0, 64)

cdef srtp_op_fn OPS[SRTP_OP_COUNT]
OPS[OP_PROTECT] = srtp_protect_rtp
OPS[OP_UNPROTECT] = srtp_unprotect_rtp
OPS[OP_PROTECT_RTCP] = srtp_protect_rtcp
OPS[OP_UNPROTECT_RTCP] = srtp_unprotect_rtcp

_OP_NAMES = ("protect", "unprotect", "protect_rtcp", "unprotect_rtcp")


# --------------------------------------------------------------------------
# Byte order helpers
# --------------------------------------------------------------------------

cdef inline uint16_t load16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t load32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | p[3])

cdef inline void store32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xff
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff

cdef inline void xor32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] ^= (v >> 24) & 0xff
    p[1] ^= (v >> 16) & 0xff
    p[2] ^= (v >> 8) & 0xff
    p[3] ^= v & 0xff


# --------------------------------------------------------------------------
# Replay window (RFC 3711 section 3.3.2) and index estimation (section 3.3.1)
# --------------------------------------------------------------------------

cdef inline int replay_check(const srtp_replay_t *r, uint64_t index,
                             uint32_t window) noexcept nogil:
    cdef uint64_t pos
    if not r.started or index > r.top:
        return SRTP_OK
    if r.top - index >= window:
        return SRTP_ERR_REPLAY_OLD
    pos = index & (window - 1)
    if r.bits[pos >> 6] & (<uint64_t>1 << (pos & 63)):
        return SRTP_ERR_REPLAY
    return SRTP_OK

cdef inline void replay_clear(srtp_replay_t *r, uint64_t index, uint32_t window) noexcept nogil:
    cdef uint64_t pos = index & (window - 1)
    r.bits[pos >> 6] &= ~(<uint64_t>1 << (pos & 63))

cdef inline void replay_add(srtp_replay_t *r, uint64_t index, uint32_t window) noexcept nogil:
    cdef uint64_t pos, j
    if not r.started:
        memset(r.bits, 0, sizeof(r.bits))
        r.started = 1
        r.top = index
    elif index > r.top:
        if index - r.top >= window:
            memset(r.bits, 0, sizeof(r.bits))
        else:
            # indices skipped between the old top and this one were not seen
            j = r.top + 1
            while j <= index:
                replay_clear(r, j, window)
                j += 1
        r.top = index
    pos = index & (window - 1)
    r.bits[pos >> 6] |= (<uint64_t>1 << (pos & 63))

cdef inline int estimate_index(const srtp_replay_t *r, uint16_t seq,
                               uint64_t *index) noexcept nogil:
    """RFC 3711 section 3.3.1 / Appendix A: guess ROC from the highest index.

    Like libsrtp, a stream's first packet sets ROC 0, and a guess never goes
    below ROC 0.
    """
    cdef uint32_t roc, s_l
    cdef uint64_t v
    if not r.started:
        index[0] = seq
        return SRTP_OK
    roc = <uint32_t>(r.top >> 16)
    s_l = <uint32_t>(r.top & 0xffff)
    v = roc
    if s_l < 32768:
        if <uint32_t>seq > s_l + 32768 and roc > 0:
            v = roc - 1
    elif s_l - 32768 > <uint32_t>seq:
        if roc == ROC_MAX:
            return SRTP_ERR_INDEX_EXHAUSTED
        v = <uint64_t>roc + 1
    index[0] = (v << 16) | seq
    return SRTP_OK


# --------------------------------------------------------------------------
# Stream table: open addressing on SSRC, never shrinks, bounded by max_streams
# --------------------------------------------------------------------------

cdef inline uint32_t ssrc_hash(const srtp_ctx_t *ctx, uint32_t ssrc) noexcept nogil:
    """Keyed multiplicative hash: the keys are random per session."""
    return <uint32_t>((((<uint64_t>ssrc) ^ ctx.hash_xor) * ctx.hash_mul) >> 32)

cdef inline srtp_stream_t *stream_find(srtp_ctx_t *ctx, uint32_t ssrc) noexcept nogil:
    cdef uint32_t mask = ctx.table_size - 1
    cdef uint32_t i = ssrc_hash(ctx, ssrc) & mask
    while ctx.streams[i].in_use:
        if ctx.streams[i].ssrc == ssrc:
            return &ctx.streams[i]
        i = (i + 1) & mask
    return NULL

cdef srtp_stream_t *stream_insert(srtp_ctx_t *ctx, uint32_t ssrc) noexcept nogil:
    """Add a stream for `ssrc` (known to be absent). NULL if over the limit or
    out of memory; callers check the limit first, so NULL there means memory."""
    cdef srtp_stream_t *bigger
    cdef srtp_stream_t *old
    cdef uint32_t i, j, size, mask
    if ctx.stream_count >= ctx.max_streams:
        return NULL
    if (ctx.stream_count + 1) * 2 > ctx.table_size:
        size = ctx.table_size * 2
        bigger = <srtp_stream_t *>calloc(size, sizeof(srtp_stream_t))
        if bigger == NULL:
            return NULL
        mask = size - 1
        old = ctx.streams
        for i in range(ctx.table_size):
            if old[i].in_use:
                j = ssrc_hash(ctx, old[i].ssrc) & mask
                while bigger[j].in_use:
                    j = (j + 1) & mask
                bigger[j] = old[i]
        free(old)
        ctx.streams = bigger
        ctx.table_size = size
    mask = ctx.table_size - 1
    i = ssrc_hash(ctx, ssrc) & mask
    while ctx.streams[i].in_use:
        i = (i + 1) & mask
    memset(&ctx.streams[i], 0, sizeof(srtp_stream_t))
    ctx.streams[i].in_use = 1
    ctx.streams[i].ssrc = ssrc
    ctx.stream_count += 1
    return &ctx.streams[i]


cdef inline int stream_add(srtp_ctx_t *ctx, uint32_t ssrc, srtp_stream_t **out) noexcept nogil:
    """Add a stream for a new SSRC: SRTP_OK, or the limit / memory status."""
    if ctx.stream_count >= ctx.max_streams:
        return SRTP_ERR_STREAM_LIMIT
    out[0] = stream_insert(ctx, ssrc)
    return SRTP_OK if out[0] != NULL else SRTP_ERR_NO_MEMORY


# --------------------------------------------------------------------------
# Crypto transforms (all primitives from OpenSSL EVP)
# --------------------------------------------------------------------------

cdef inline int hmac_sha1(srtp_keyset_t *ks, const uint8_t *data, size_t length,
                          const uint8_t *tail, size_t tail_len,
                          uint8_t *mac) noexcept nogil:
    """HMAC-SHA1 (RFC 2104) of data||tail from the precomputed keyed states."""
    cdef uint8_t inner[HMAC_SHA1_LEN]
    cdef unsigned int n = 0
    if EVP_MD_CTX_copy_ex(ks.hmac_work, ks.hmac_inner) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DigestUpdate(ks.hmac_work, data, length) != 1:
        return SRTP_ERR_CRYPTO
    if tail_len and EVP_DigestUpdate(ks.hmac_work, tail, tail_len) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DigestFinal_ex(ks.hmac_work, inner, &n) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_MD_CTX_copy_ex(ks.hmac_work, ks.hmac_outer) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DigestUpdate(ks.hmac_work, inner, HMAC_SHA1_LEN) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DigestFinal_ex(ks.hmac_work, mac, &n) != 1:
        return SRTP_ERR_CRYPTO
    return SRTP_OK

cdef inline int aes_ctr(srtp_keyset_t *ks, uint32_t ssrc, uint64_t index,
                        uint8_t *data, size_t length) noexcept nogil:
    """AES-CM (RFC 3711 section 4.1.1) in place.

    IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
    """
    cdef uint8_t iv[16]
    cdef int outl = 0
    cdef int k
    memcpy(iv, ks.salt, 14)
    iv[14] = 0
    iv[15] = 0
    xor32(iv + 4, ssrc)
    for k in range(6):
        iv[13 - k] ^= (index >> (8 * k)) & 0xff
    if EVP_EncryptInit_ex(ks.enc, NULL, NULL, NULL, iv) != 1:
        return SRTP_ERR_CRYPTO
    if length and EVP_EncryptUpdate(ks.enc, data, &outl, data, <int>length) != 1:
        return SRTP_ERR_CRYPTO
    return SRTP_OK

cdef inline void gcm_iv(const srtp_keyset_t *ks, uint32_t ssrc, uint32_t hi,
                        uint32_t lo16_or_32, int rtcp, uint8_t *iv) noexcept nogil:
    """RFC 7714 sections 8.1 (SRTP) and 9.1 (SRTCP) IV formation.

    SRTP:  00 00 || SSRC || ROC || SEQ              XOR salt
    SRTCP: 00 00 || SSRC || 00 00 || 0 || index(31)  XOR salt
    """
    memset(iv, 0, 12)
    store32(iv + 2, ssrc)
    if rtcp:
        store32(iv + 8, lo16_or_32)
    else:
        store32(iv + 6, hi)
        iv[10] = (lo16_or_32 >> 8) & 0xff
        iv[11] = lo16_or_32 & 0xff
    for k in range(12):
        iv[k] ^= ks.salt[k]

cdef inline int gcm_seal(srtp_keyset_t *ks, const uint8_t *iv,
                         const uint8_t *aad, size_t aad_len,
                         const uint8_t *aad2, size_t aad2_len,
                         uint8_t *data, size_t length, uint8_t *tag) noexcept nogil:
    cdef int outl = 0
    if EVP_EncryptInit_ex(ks.enc, NULL, NULL, NULL, iv) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_EncryptUpdate(ks.enc, NULL, &outl, aad, <int>aad_len) != 1:
        return SRTP_ERR_CRYPTO
    if aad2_len and EVP_EncryptUpdate(ks.enc, NULL, &outl, aad2, <int>aad2_len) != 1:
        return SRTP_ERR_CRYPTO
    if length and EVP_EncryptUpdate(ks.enc, data, &outl, data, <int>length) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_EncryptFinal_ex(ks.enc, data + length, &outl) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_CIPHER_CTX_ctrl(ks.enc, EVP_CTRL_GCM_GET_TAG, GCM_TAG, tag) != 1:
        return SRTP_ERR_CRYPTO
    return SRTP_OK

cdef inline int gcm_open(srtp_keyset_t *ks, const uint8_t *iv,
                         const uint8_t *aad, size_t aad_len,
                         const uint8_t *aad2, size_t aad2_len,
                         uint8_t *data, size_t length, const uint8_t *tag) noexcept nogil:
    """Decrypt in place and verify the tag; SRTP_ERR_AUTH on mismatch.

    On failure the bytes at `data` are unspecified (never plaintext that
    authenticated), so a caller must drop the packet.
    """
    cdef uint8_t tagbuf[GCM_TAG]
    cdef uint8_t sink[16]
    cdef int outl = 0
    memcpy(tagbuf, tag, GCM_TAG)
    if EVP_DecryptInit_ex(ks.dec, NULL, NULL, NULL, iv) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DecryptUpdate(ks.dec, NULL, &outl, aad, <int>aad_len) != 1:
        return SRTP_ERR_CRYPTO
    if aad2_len and EVP_DecryptUpdate(ks.dec, NULL, &outl, aad2, <int>aad2_len) != 1:
        return SRTP_ERR_CRYPTO
    if length and EVP_DecryptUpdate(ks.dec, data, &outl, data, <int>length) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_CIPHER_CTX_ctrl(ks.dec, EVP_CTRL_GCM_SET_TAG, GCM_TAG, tagbuf) != 1:
        return SRTP_ERR_CRYPTO
    if EVP_DecryptFinal_ex(ks.dec, sink, &outl) <= 0:
        return SRTP_ERR_AUTH
    return SRTP_OK


# --------------------------------------------------------------------------
# Packet framing checks
# --------------------------------------------------------------------------

cdef inline int rtp_header_len(const uint8_t *pkt, size_t length, size_t *hl) noexcept nogil:
    """RFC 3550 section 5.1/5.3.1: fixed header, CSRCs and the extension."""
    cdef size_t n
    if length > SRTP_MAX_PACKET:
        return SRTP_ERR_TOO_LONG
    if length < 12:
        return SRTP_ERR_TOO_SHORT
    if (pkt[0] >> 6) != 2:
        return SRTP_ERR_BAD_VERSION
    n = 12 + 4 * (pkt[0] & 0x0f)
    if pkt[0] & 0x10:
        if n + 4 > length:
            return SRTP_ERR_BAD_HEADER
        n += 4 + 4 * <size_t>load16(pkt + n + 2)
    if n > length:
        return SRTP_ERR_BAD_HEADER
    hl[0] = n
    return SRTP_OK

cdef inline int rtcp_header_ok(const uint8_t *pkt, size_t length) noexcept nogil:
    if length > SRTP_MAX_PACKET:
        return SRTP_ERR_TOO_LONG
    if length < 8:
        return SRTP_ERR_TOO_SHORT
    if (pkt[0] >> 6) != 2:
        return SRTP_ERR_BAD_VERSION
    return SRTP_OK

cdef inline int fail(srtp_ctx_t *ctx, int status) noexcept nogil:
    ctx.errors[status] += 1
    return status

cdef inline int done(srtp_ctx_t *ctx, int op, size_t length) noexcept nogil:
    ctx.ok[op] += 1
    ctx.octets[op] += length
    return SRTP_OK


# --------------------------------------------------------------------------
# The four operations (C-level API, declared in srtp.pxd)
# --------------------------------------------------------------------------

cdef size_t srtp_rtp_overhead(const srtp_ctx_t *ctx) noexcept nogil:
    return ctx.tag_len

cdef size_t srtp_rtcp_overhead(const srtp_ctx_t *ctx) noexcept nogil:
    return ctx.tag_len + SRTCP_TRAILER

cdef int srtp_protect_rtp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                          size_t capacity, size_t *out_len) noexcept nogil:
    """RFC 3711 section 3.3 (AES-CM/HMAC) or RFC 7714 section 8 (GCM)."""
    cdef size_t hl = 0
    cdef uint64_t index = 0
    cdef uint8_t roc_be[4]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    cdef uint8_t iv[12]
    cdef srtp_replay_t fresh
    cdef srtp_replay_t *r
    cdef srtp_stream_t *s
    cdef uint32_t ssrc
    cdef int st = rtp_header_len(pkt, length, &hl)
    if st:
        return fail(ctx, st)
    if length + ctx.tag_len > SRTP_MAX_PACKET:
        return fail(ctx, SRTP_ERR_TOO_LONG)
    if capacity < length + ctx.tag_len:
        return fail(ctx, SRTP_ERR_NO_SPACE)
    ssrc = load32(pkt + 8)
    s = stream_find(ctx, ssrc)
    fresh.started = 0
    fresh.top = 0
    r = &s.rtp if s != NULL else &fresh
    st = estimate_index(r, load16(pkt + 2), &index)
    if st:
        return fail(ctx, st)
    st = replay_check(r, index, ctx.window)
    if st and not (st == SRTP_ERR_REPLAY and ctx.allow_repeat_tx):
        return fail(ctx, st)
    if s == NULL:
        st = stream_add(ctx, ssrc, &s)
        if st:
            return fail(ctx, st)
    if ctx.aead:
        gcm_iv(&ctx.rtp, ssrc, <uint32_t>(index >> 16), <uint32_t>(index & 0xffff), 0, iv)
        st = gcm_seal(&ctx.rtp, iv, pkt, hl, NULL, 0, pkt + hl, length - hl, pkt + length)
    else:
        st = aes_ctr(&ctx.rtp, ssrc, index, pkt + hl, length - hl)
        if st == SRTP_OK:
            store32(roc_be, <uint32_t>(index >> 16))
            st = hmac_sha1(&ctx.rtp, pkt, length, roc_be, 4, mac)
            memcpy(pkt + length, mac, CM_TAG)
    if st:
        return fail(ctx, st)
    replay_add(&s.rtp, index, ctx.window)
    out_len[0] = length + ctx.tag_len
    return done(ctx, OP_PROTECT, length)

cdef int srtp_unprotect_rtp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                            size_t capacity, size_t *out_len) noexcept nogil:
    cdef size_t hl = 0
    cdef size_t body
    cdef uint64_t index = 0
    cdef uint8_t roc_be[4]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    cdef uint8_t iv[12]
    cdef srtp_replay_t fresh
    cdef srtp_replay_t *r
    cdef srtp_stream_t *s
    cdef uint32_t ssrc
    cdef int st
    if length > capacity:
        return fail(ctx, SRTP_ERR_BOUNDS)
    st = rtp_header_len(pkt, length, &hl)
    if st:
        return fail(ctx, st)
    if length < hl + ctx.tag_len:
        return fail(ctx, SRTP_ERR_TOO_SHORT)
    body = length - ctx.tag_len
    ssrc = load32(pkt + 8)
    s = stream_find(ctx, ssrc)
    if s == NULL and ctx.stream_count >= ctx.max_streams:
        return fail(ctx, SRTP_ERR_STREAM_LIMIT)
    fresh.started = 0
    fresh.top = 0
    r = &s.rtp if s != NULL else &fresh
    st = estimate_index(r, load16(pkt + 2), &index)
    if st:
        return fail(ctx, st)
    st = replay_check(r, index, ctx.window)
    if st:
        return fail(ctx, st)
    if ctx.aead:
        gcm_iv(&ctx.rtp, ssrc, <uint32_t>(index >> 16), <uint32_t>(index & 0xffff), 0, iv)
        st = gcm_open(&ctx.rtp, iv, pkt, hl, NULL, 0, pkt + hl, body - hl, pkt + body)
    else:
        store32(roc_be, <uint32_t>(index >> 16))
        st = hmac_sha1(&ctx.rtp, pkt, body, roc_be, 4, mac)
        if st == SRTP_OK and CRYPTO_memcmp(mac, pkt + body, CM_TAG) != 0:
            st = SRTP_ERR_AUTH
        if st == SRTP_OK:
            st = aes_ctr(&ctx.rtp, ssrc, index, pkt + hl, body - hl)
    if st:
        return fail(ctx, st)
    if s == NULL:
        st = stream_add(ctx, ssrc, &s)
        if st:
            return fail(ctx, st)
    replay_add(&s.rtp, index, ctx.window)
    out_len[0] = body
    return done(ctx, OP_UNPROTECT, length)

cdef int srtp_protect_rtcp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                           size_t capacity, size_t *out_len) noexcept nogil:
    """RFC 3711 section 3.4 (AES-CM/HMAC) or RFC 7714 section 9 (GCM).

    Output: header(8) || E-encrypted rest || trailer, where the trailer is
    E||index then tag (CM), or tag then E||index (GCM, RFC 7714 section 9.2).
    """
    cdef uint8_t mac[HMAC_SHA1_LEN]
    cdef uint8_t iv[12]
    cdef uint8_t trailer[4]
    cdef uint64_t index
    cdef uint32_t ssrc
    cdef srtp_stream_t *s
    cdef int st = rtcp_header_ok(pkt, length)
    if st:
        return fail(ctx, st)
    if length + ctx.tag_len + SRTCP_TRAILER > SRTP_MAX_PACKET:
        return fail(ctx, SRTP_ERR_TOO_LONG)
    if capacity < length + ctx.tag_len + SRTCP_TRAILER:
        return fail(ctx, SRTP_ERR_NO_SPACE)
    ssrc = load32(pkt + 4)
    s = stream_find(ctx, ssrc)
    if s == NULL:
        st = stream_add(ctx, ssrc, &s)
        if st:
            return fail(ctx, st)
    index = s.rtcp.top + 1 if s.rtcp.started else 0
    if index > SRTCP_INDEX_MASK:
        return fail(ctx, SRTP_ERR_INDEX_EXHAUSTED)
    store32(trailer, <uint32_t>index | SRTCP_E_BIT)
    if ctx.aead:
        gcm_iv(&ctx.rtcp, ssrc, 0, <uint32_t>index, 1, iv)
        st = gcm_seal(&ctx.rtcp, iv, pkt, 8, trailer, 4, pkt + 8, length - 8, pkt + length)
        memcpy(pkt + length + GCM_TAG, trailer, 4)
    else:
        st = aes_ctr(&ctx.rtcp, ssrc, index, pkt + 8, length - 8)
        memcpy(pkt + length, trailer, 4)
        if st == SRTP_OK:
            st = hmac_sha1(&ctx.rtcp, pkt, length + 4, NULL, 0, mac)
            memcpy(pkt + length + 4, mac, CM_TAG)
    if st:
        return fail(ctx, st)
    s.rtcp.top = index
    s.rtcp.started = 1
    out_len[0] = length + ctx.tag_len + SRTCP_TRAILER
    return done(ctx, OP_PROTECT_RTCP, length)

cdef int srtp_unprotect_rtcp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                             size_t capacity, size_t *out_len) noexcept nogil:
    cdef uint8_t mac[HMAC_SHA1_LEN]
    cdef uint8_t iv[12]
    cdef const uint8_t *trailer
    cdef const uint8_t *tag
    cdef uint32_t word, ssrc
    cdef uint64_t index
    cdef size_t body
    cdef bint encrypted
    cdef srtp_replay_t fresh
    cdef srtp_replay_t *r
    cdef srtp_stream_t *s
    cdef int st
    if length > capacity:
        return fail(ctx, SRTP_ERR_BOUNDS)
    st = rtcp_header_ok(pkt, length)
    if st:
        return fail(ctx, st)
    if length < 8 + ctx.tag_len + SRTCP_TRAILER:
        return fail(ctx, SRTP_ERR_TOO_SHORT)
    body = length - ctx.tag_len - SRTCP_TRAILER
    if ctx.aead:
        tag = pkt + body
        trailer = pkt + body + GCM_TAG
    else:
        trailer = pkt + body
        tag = pkt + body + SRTCP_TRAILER
    word = load32(trailer)
    encrypted = (word & SRTCP_E_BIT) != 0
    index = word & SRTCP_INDEX_MASK
    ssrc = load32(pkt + 4)
    s = stream_find(ctx, ssrc)
    if s == NULL and ctx.stream_count >= ctx.max_streams:
        return fail(ctx, SRTP_ERR_STREAM_LIMIT)
    fresh.started = 0
    fresh.top = 0
    r = &s.rtcp if s != NULL else &fresh
    st = replay_check(r, index, ctx.window)
    if st:
        return fail(ctx, st)
    # Authenticate first, so that an E=0 verdict is about a genuine packet
    # (RFC 7714 section 9.2: with E=0 the whole packet is AAD).
    if ctx.aead:
        gcm_iv(&ctx.rtcp, ssrc, 0, <uint32_t>index, 1, iv)
        if encrypted:
            st = gcm_open(&ctx.rtcp, iv, pkt, 8, trailer, 4, pkt + 8, body - 8, tag)
        else:
            st = gcm_open(&ctx.rtcp, iv, pkt, body, trailer, 4, pkt + body, 0, tag)
    else:
        st = hmac_sha1(&ctx.rtcp, pkt, body + SRTCP_TRAILER, NULL, 0, mac)
        if st == SRTP_OK and CRYPTO_memcmp(mac, tag, CM_TAG) != 0:
            st = SRTP_ERR_AUTH
    if st == SRTP_OK and not encrypted:
        st = SRTP_ERR_UNENCRYPTED
    if st == SRTP_OK and not ctx.aead:
        st = aes_ctr(&ctx.rtcp, ssrc, index, pkt + 8, body - 8)
    if st:
        return fail(ctx, st)
    if s == NULL:
        st = stream_add(ctx, ssrc, &s)
        if st:
            return fail(ctx, st)
    replay_add(&s.rtcp, index, ctx.window)
    out_len[0] = body
    return done(ctx, OP_UNPROTECT_RTCP, length)


# --------------------------------------------------------------------------
# Key derivation (RFC 3711 section 4.3, AES-CM PRF, key derivation rate 0)
# --------------------------------------------------------------------------

cdef int kdf(const uint8_t *master_key, const uint8_t *master_salt14,
             uint8_t label, uint8_t *out, int n) except -1:
    """PRF_n(k_master, x) with x = (label || r) XOR master_salt, r = 0.

    The 56-bit key_id sits in the low bits of the 112-bit salt, so the label
    lands on octet 7. A 96-bit (GCM) master salt is padded with two zero
    octets on the right, as libsrtp does (RFC 7714 section 11).
    """
    cdef uint8_t iv[16]
    cdef int outl = 0
    cdef EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new()
    if c == NULL:
        raise MemoryError()
    memcpy(iv, master_salt14, 14)
    iv[7] ^= label
    iv[14] = 0
    iv[15] = 0
    try:
        if (EVP_EncryptInit_ex(c, AES_128_CTR, NULL, master_key, iv) != 1
                or EVP_EncryptUpdate(c, out, &outl, ZEROS, n) != 1):
            raise SrtpError("OpenSSL AES-CTR failed during key derivation")
    finally:
        EVP_CIPHER_CTX_free(c)
        OPENSSL_cleanse(iv, 16)
    return 0

cdef int keyset_init(srtp_keyset_t *ks, int aead, const uint8_t *key,
                     const uint8_t *salt, int salt_len,
                     const uint8_t *auth_key, int auth_len) except -1:
    cdef uint8_t pad[SHA1_BLOCK]
    cdef int k
    memcpy(ks.salt, salt, salt_len)
    ks.enc = EVP_CIPHER_CTX_new()
    if ks.enc == NULL:
        raise MemoryError()
    if aead:
        ks.dec = EVP_CIPHER_CTX_new()
        if ks.dec == NULL:
            raise MemoryError()
        if (EVP_EncryptInit_ex(ks.enc, AES_128_GCM, NULL, key, ZEROS) != 1
                or EVP_DecryptInit_ex(ks.dec, AES_128_GCM, NULL, key, ZEROS) != 1):
            raise SrtpError("OpenSSL refused the AES-128-GCM key")
        return 0
    if EVP_EncryptInit_ex(ks.enc, AES_128_CTR, NULL, key, ZEROS) != 1:
        raise SrtpError("OpenSSL refused the AES-128-CTR key")
    ks.hmac_inner = EVP_MD_CTX_new()
    ks.hmac_outer = EVP_MD_CTX_new()
    ks.hmac_work = EVP_MD_CTX_new()
    if ks.hmac_inner == NULL or ks.hmac_outer == NULL or ks.hmac_work == NULL:
        raise MemoryError()
    try:
        # RFC 2104: K is shorter than the block, so pad it with zeros.
        memset(pad, 0, SHA1_BLOCK)
        memcpy(pad, auth_key, auth_len)
        for k in range(SHA1_BLOCK):
            pad[k] ^= 0x36
        if (EVP_DigestInit_ex(ks.hmac_inner, SHA1, NULL) != 1
                or EVP_DigestUpdate(ks.hmac_inner, pad, SHA1_BLOCK) != 1):
            raise SrtpError("OpenSSL SHA1 failed")
        for k in range(SHA1_BLOCK):
            pad[k] ^= 0x36 ^ 0x5c
        if (EVP_DigestInit_ex(ks.hmac_outer, SHA1, NULL) != 1
                or EVP_DigestUpdate(ks.hmac_outer, pad, SHA1_BLOCK) != 1
                or EVP_DigestInit_ex(ks.hmac_work, SHA1, NULL) != 1):
            raise SrtpError("OpenSSL SHA1 failed")
    finally:
        OPENSSL_cleanse(pad, SHA1_BLOCK)
    return 0

cdef void keyset_free(srtp_keyset_t *ks) noexcept:
    # EVP_*_free wipe the key schedules and digest states they own.
    if ks.enc != NULL:
        EVP_CIPHER_CTX_free(ks.enc)
    if ks.dec != NULL:
        EVP_CIPHER_CTX_free(ks.dec)
    if ks.hmac_inner != NULL:
        EVP_MD_CTX_free(ks.hmac_inner)
    if ks.hmac_outer != NULL:
        EVP_MD_CTX_free(ks.hmac_outer)
    if ks.hmac_work != NULL:
        EVP_MD_CTX_free(ks.hmac_work)
    OPENSSL_cleanse(ks, sizeof(srtp_keyset_t))


# --------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------

_STATUS_MESSAGES = {
    SRTP_ERR_AUTH: "authentication failed (bad tag: tampered packet, wrong key or wrong profile)",
    SRTP_ERR_REPLAY: "replayed packet: its index was already accepted",
    SRTP_ERR_REPLAY_OLD: "packet index is older than the replay window",
    SRTP_ERR_TOO_SHORT: "packet too short for its header and authentication tag",
    SRTP_ERR_BAD_VERSION: "not RTP/RTCP: version field is not 2",
    SRTP_ERR_BAD_HEADER: "RTP header (CSRC list or header extension) overruns the packet",
    SRTP_ERR_TOO_LONG: "packet longer than 65535 bytes",
    SRTP_ERR_NO_SPACE: "no room after the packet for the authentication tag",
    SRTP_ERR_STREAM_LIMIT: "too many SSRCs in this session (max_streams reached)",
    SRTP_ERR_INDEX_EXHAUSTED: "packet index space exhausted: the session must be re-keyed",
    SRTP_ERR_UNENCRYPTED: "unencrypted SRTCP (E bit clear) refused: confidentiality is mandatory",
    SRTP_ERR_CRYPTO: "OpenSSL reported an internal error",
    SRTP_ERR_BOUNDS: "packet offset/length lies outside the buffer",
    SRTP_ERR_NO_MEMORY: "out of memory growing the stream table",
}

_STATUS_ERRORS = {
    SRTP_ERR_AUTH: AuthenticationError,
    SRTP_ERR_REPLAY: ReplayError,
    SRTP_ERR_REPLAY_OLD: ReplayError,
    SRTP_ERR_TOO_SHORT: MalformedPacketError,
    SRTP_ERR_BAD_VERSION: MalformedPacketError,
    SRTP_ERR_BAD_HEADER: MalformedPacketError,
    SRTP_ERR_TOO_LONG: MalformedPacketError,
    SRTP_ERR_NO_SPACE: MalformedPacketError,
    SRTP_ERR_BOUNDS: MalformedPacketError,
    SRTP_ERR_STREAM_LIMIT: StreamLimitError,
    SRTP_ERR_INDEX_EXHAUSTED: KeyExhaustedError,
    SRTP_ERR_UNENCRYPTED: PolicyError,
    SRTP_ERR_CRYPTO: SrtpError,
    SRTP_ERR_NO_MEMORY: SrtpError,
}


def error_for_status(int status, str operation="unprotect"):
    """The exception that the per-packet API raises for a batch status code."""
    cls = _STATUS_ERRORS.get(status, SrtpError)
    return cls("%s: %s" % (operation, _STATUS_MESSAGES.get(status, "status %d" % status)),
               Status(status))



cdef int get_packet(object data, Py_buffer *view) except -1:
    """Acquire a packet passed as any contiguous bytes-like object."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except BufferError as exc:
        raise MalformedPacketError("packet must be a contiguous bytes-like object: %s" % exc,
                                   Status.BOUNDS) from None
    except TypeError:
        raise TypeError("packet must be bytes-like (bytes, bytearray, memoryview), not %s"
                        % type(data).__name__) from None
    return 0


cdef int get_array(object obj, Py_buffer *view, Py_ssize_t itemsize, bint writable,
                   str name) except -1:
    """Acquire a C-contiguous 1-D buffer of unsigned `itemsize`-byte items.

    The raw buffer protocol costs far less per call than typed memoryviews,
    which matters for batches of a few dozen packets.
    """
    cdef bytes fmt
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    if obj is None:
        raise TypeError("%s must be a buffer, not None" % name)
    try:
        PyObject_GetBuffer(obj, view, flags)
    except BufferError as exc:
        raise ValueError("%s must be a %scontiguous buffer: %s"
                         % (name, "writable " if writable else "", exc)) from None
    fmt = view.format if view.format != NULL else b"B"
    if view.ndim > 1 or view.itemsize != itemsize or fmt.lstrip(b"@=<") not in (
            (b"B",) if itemsize == 1 else (b"I", b"L") if itemsize == 4 else ()):
        PyBuffer_Release(view)
        raise ValueError("%s must be a 1-D array of %s" % (
            name, "uint8 (bytes)" if itemsize == 1 else "uint32"))
    return 0


cdef class Session:
    """SRTP/SRTCP keys and per-SSRC state for one direction of one association.

    ``Session(profile, key, salt, *, replay_window=128, max_streams=1024,
    allow_repeat_tx=False)``

    * ``key``/``salt`` are the *master* key and salt, as exported from DTLS
      (RFC 5764 section 4.2); their lengths must match the profile.
    * ``replay_window``: packets remembered for replay protection, a power of
      two from 64 to 1024 (libsrtp's default is 128).
    * ``max_streams``: SSRCs this session may learn; a further SSRC gets
      StreamLimitError (bounds what a peer can make the gateway allocate).
    * ``allow_repeat_tx``: let protect() encrypt an index twice, as libsrtp's
      option of that name (off: an (SSRC, index) pair is never reused).

    A session is used from one thread at a time; the batch methods release the
    GIL and refuse concurrent use of the same session with RuntimeError.
    """

    def __cinit__(self):
        self.ready = 0
        self.ctx = NULL
        self.scratch = NULL
        self.busy = 0

    def __init__(self, profile, key, salt, *, int replay_window=128,
                 int max_streams=1024, bint allow_repeat_tx=False):
        cdef uint8_t msalt[14]
        cdef uint8_t enc_key[16]
        cdef uint8_t auth_key[HMAC_SHA1_LEN]
        cdef uint8_t ssalt[14]
        cdef uint8_t mkey[16]
        cdef Py_buffer kview, sview
        if self.ctx != NULL:
            raise SrtpError("Session is already initialised (or failed to initialise)")
        try:
            prof = Profile(profile)
        except ValueError:
            raise ValueError("unsupported SRTP profile %r: callsgw accepts only %s"
                             % (profile, ", ".join(p.name for p in Profile))) from None
        if replay_window < 64 or replay_window > SRTP_MAX_WINDOW or (replay_window & (replay_window - 1)):
            raise ValueError("replay_window must be a power of two from 64 to %d" % SRTP_MAX_WINDOW)
        if max_streams < 1 or max_streams > 1 << 20:
            raise ValueError("max_streams must be between 1 and 1048576")
        self.ctx = <srtp_ctx_t *>calloc(1, sizeof(srtp_ctx_t))
        self.scratch = <uint8_t *>malloc(SCRATCH_SIZE)
        if self.ctx == NULL or self.scratch == NULL:
            raise MemoryError()
        self.ctx.table_size = 8
        self.ctx.streams = <srtp_stream_t *>calloc(self.ctx.table_size, sizeof(srtp_stream_t))
        if self.ctx.streams == NULL:
            raise MemoryError()
        self.profile = prof
        self.ctx.profile = <int>prof
        self.ctx.aead = prof.aead
        self.ctx.tag_len = prof.tag_length
        self.ctx.window = replay_window
        self.ctx.max_streams = max_streams
        self.ctx.allow_repeat_tx = allow_repeat_tx
        hash_keys = os.urandom(16)
        self.ctx.hash_xor = int.from_bytes(hash_keys[:8], "little")
        self.ctx.hash_mul = int.from_bytes(hash_keys[8:], "little") | 1
        get_packet(key, &kview)
        try:
            get_packet(salt, &sview)
        except BaseException:
            PyBuffer_Release(&kview)
            raise
        try:
            if kview.len != prof.key_length:
                raise ValueError("%s needs a %d-byte master key, got %d bytes"
                                 % (prof.name, prof.key_length, kview.len))
            if sview.len != prof.salt_length:
                raise ValueError("%s needs a %d-byte master salt, got %d bytes"
                                 % (prof.name, prof.salt_length, sview.len))
            # copy straight from the caller's buffers, so that no unwipeable
            # Python copy of the master key is ever made here
            memcpy(mkey, kview.buf, 16)
            memset(msalt, 0, 14)
            memcpy(msalt, sview.buf, sview.len)
        finally:
            PyBuffer_Release(&kview)
            PyBuffer_Release(&sview)
        try:
            kdf(mkey, msalt, LABEL_RTP_ENC, enc_key, 16)
            kdf(mkey, msalt, LABEL_RTP_SALT, ssalt, prof.salt_length)
            if not prof.aead:
                kdf(mkey, msalt, LABEL_RTP_AUTH, auth_key, HMAC_SHA1_LEN)
            keyset_init(&self.ctx.rtp, prof.aead, enc_key, ssalt, prof.salt_length,
                        auth_key, HMAC_SHA1_LEN)
            kdf(mkey, msalt, LABEL_RTCP_ENC, enc_key, 16)
            kdf(mkey, msalt, LABEL_RTCP_SALT, ssalt, prof.salt_length)
            if not prof.aead:
                kdf(mkey, msalt, LABEL_RTCP_AUTH, auth_key, HMAC_SHA1_LEN)
            keyset_init(&self.ctx.rtcp, prof.aead, enc_key, ssalt, prof.salt_length,
                        auth_key, HMAC_SHA1_LEN)
        finally:
            OPENSSL_cleanse(mkey, 16)
            OPENSSL_cleanse(msalt, 14)
            OPENSSL_cleanse(enc_key, 16)
            OPENSSL_cleanse(auth_key, HMAC_SHA1_LEN)
            OPENSSL_cleanse(ssalt, 14)
        self.ready = 1

    @classmethod
    def _from_session_keys(cls, profile, bytes rtp_key, bytes rtp_salt, bytes rtp_auth=b"",
                           bytes rtcp_key=None, bytes rtcp_salt=None, bytes rtcp_auth=None):
        """Test hook: build a session from already-derived session keys.

        RFC 7714's test vectors give session keys, not master keys. Not for
        production use: real sessions always derive their keys.
        """
        cdef Session self = cls(profile, bytes(Profile(profile).key_length),
                                bytes(Profile(profile).salt_length))
        prof = self.profile
        rtcp_key = rtp_key if rtcp_key is None else rtcp_key
        rtcp_salt = rtp_salt if rtcp_salt is None else rtcp_salt
        rtcp_auth = rtp_auth if rtcp_auth is None else rtcp_auth
        if (len(rtp_key) != 16 or len(rtcp_key) != 16 or len(rtp_salt) != prof.salt_length
                or len(rtcp_salt) != prof.salt_length
                or (not prof.aead and (len(rtp_auth) != 20 or len(rtcp_auth) != 20))):
            raise ValueError("wrong session key, salt or auth key length")
        self.ready = 0
        keyset_free(&self.ctx.rtp)
        keyset_free(&self.ctx.rtcp)
        keyset_init(&self.ctx.rtp, prof.aead, rtp_key, rtp_salt, prof.salt_length,
                    rtp_auth, len(rtp_auth))
        keyset_init(&self.ctx.rtcp, prof.aead, rtcp_key, rtcp_salt, prof.salt_length,
                    rtcp_auth, len(rtcp_auth))
        self.ready = 1
        return self

    def __dealloc__(self):
        if self.ctx != NULL:
            keyset_free(&self.ctx.rtp)
            keyset_free(&self.ctx.rtcp)
            free(self.ctx.streams)
            OPENSSL_cleanse(self.ctx, sizeof(srtp_ctx_t))
            free(self.ctx)
            self.ctx = NULL
        if self.scratch != NULL:
            OPENSSL_cleanse(self.scratch, SCRATCH_SIZE)
            free(self.scratch)
            self.scratch = NULL

    def __repr__(self):
        # Never shows key material.
        if not self.ready:
            return "<Session (uninitialised)>"
        return "<Session %s streams=%d>" % (self.profile.name, self.ctx.stream_count)

    def __reduce__(self):
        raise TypeError("SRTP sessions hold keys and cannot be pickled")

    cdef int _check_ready(self) except -1:
        if not self.ready:
            raise SrtpError("Session is not initialised")
        if self.busy:
            raise RuntimeError("Session is in use by a batch call in another thread")
        return 0

    # -- per-packet API ---------------------------------------------------

    cdef object _one(self, object data, int op):
        """One packet: copy it into a work buffer, run the C operation, and
        return the result as new bytes, or raise the status's SrtpError.

        The busy check sits right before the C call with no Python code in
        between, so a batch running in another thread can never overlap it.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef size_t out_len = 0
        cdef size_t extra = 0
        cdef uint8_t *work
        cdef object out = None
        cdef int st
        cdef bint grows = op == OP_PROTECT or op == OP_PROTECT_RTCP
        if not self.ready:
            raise SrtpError("Session is not initialised")
        get_packet(data, &view)
        try:
            n = view.len
            if n > SRTP_MAX_PACKET:
                st = fail(self.ctx, SRTP_ERR_TOO_LONG)
            else:
                if grows:
                    # protect writes straight into the result: its size is exact
                    extra = self.ctx.tag_len + (SRTCP_TRAILER if op == OP_PROTECT_RTCP else 0)
                    out = PyBytes_FromStringAndSize(NULL, n + extra)
                    work = <uint8_t *>PyBytes_AS_STRING(out)
                else:
                    work = self.scratch
                memcpy(work, view.buf, n)
                if self.busy:
                    raise RuntimeError("Session is in use by a batch call in another thread")
                st = OPS[op](self.ctx, work, n, n + extra, &out_len)
        finally:
            PyBuffer_Release(&view)
        if st:
            raise error_for_status(st, _OP_NAMES[op])
        if grows:
            return out
        return PyBytes_FromStringAndSize(<char *>self.scratch, out_len)

    def protect(self, rtp):
        """Encrypt and authenticate one RTP packet; returns the SRTP packet."""
        return self._one(rtp, OP_PROTECT)

    def unprotect(self, srtp):
        """Verify and decrypt one SRTP packet; returns the RTP packet."""
        return self._one(srtp, OP_UNPROTECT)

    def protect_rtcp(self, rtcp):
        """Encrypt and authenticate one (compound) RTCP packet; returns SRTCP."""
        return self._one(rtcp, OP_PROTECT_RTCP)

    def unprotect_rtcp(self, srtcp):
        """Verify and decrypt one SRTCP packet; returns the RTCP packet."""
        return self._one(srtcp, OP_UNPROTECT_RTCP)

    # -- batch API ----------------------------------------------------------

    cdef object _batch(self, int op, object buf, object offsets, object lengths,
                       Py_ssize_t capacity, object status):
        cdef Py_buffer vbuf, voff, vlen, vst
        cdef Py_ssize_t n, i
        cdef size_t off, ln, cap, out_len, buflen
        cdef uint8_t *data
        cdef const uint32_t *offs
        cdef uint32_t *lens
        cdef uint8_t *st
        cdef int r
        cdef srtp_op_fn fn = OPS[op]
        cdef srtp_ctx_t *ctx
        cdef bint grows = op == OP_PROTECT or op == OP_PROTECT_RTCP
        if not self.ready:
            raise SrtpError("Session is not initialised")
        if grows and capacity < 0:
            raise ValueError("protect needs the slot capacity of each packet")
        # Acquire every buffer first: that may run Python code (a __buffer__
        # method), which must not run between the busy check and the loop.
        get_array(buf, &vbuf, 1, 1, "buf")
        try:
            get_array(offsets, &voff, 4, 0, "offsets")
            try:
                get_array(lengths, &vlen, 4, 1, "lengths")
                try:
                    n = voff.len // 4
                    if vlen.len // 4 != n:
                        raise ValueError("offsets and lengths must have the same length")
                    if status is None:
                        status = np.empty(n, dtype=np.uint8)
                    get_array(status, &vst, 1, 1, "status")
                    try:
                        if vst.len != n:
                            raise ValueError("status must have one entry per packet")
                        data = <uint8_t *>vbuf.buf
                        buflen = <size_t>vbuf.len
                        offs = <const uint32_t *>voff.buf
                        lens = <uint32_t *>vlen.buf
                        st = <uint8_t *>vst.buf
                        ctx = self.ctx
                        if self.busy:
                            raise RuntimeError("Session is in use by a batch call in another thread")
                        self.busy = 1
                        try:
                            with nogil:
                                for i in range(n):
                                    off = offs[i]
                                    ln = lens[i]
                                    cap = <size_t>capacity if grows else ln
                                    if off > buflen or cap > buflen - off or ln > cap:
                                        st[i] = fail(ctx, SRTP_ERR_BOUNDS)
                                        continue
                                    out_len = 0
                                    r = fn(ctx, data + off, ln, cap, &out_len)
                                    st[i] = <uint8_t>r
                                    if r == SRTP_OK:
                                        lens[i] = <uint32_t>out_len
                        finally:
                            self.busy = 0
                    finally:
                        PyBuffer_Release(&vst)
                finally:
                    PyBuffer_Release(&vlen)
            finally:
                PyBuffer_Release(&voff)
        finally:
            PyBuffer_Release(&vbuf)
        return status

    def protect_batch(self, buf, offsets, lengths, Py_ssize_t capacity, status=None):
        """Protect many RTP packets in place, in one call without the GIL.

        ``buf`` is one writable contiguous byte buffer (numpy uint8 array,
        bytearray, memoryview). Packet ``i`` is ``lengths[i]`` bytes at
        ``offsets[i]`` (both contiguous uint32 arrays) in a slot of
        ``capacity`` bytes, which must leave room for the tag. On success
        ``lengths[i]`` becomes the SRTP length. Returns the per-packet status
        array (uint8, values of :class:`Status`; 0 is OK), writing into
        ``status`` if given; nothing is raised for bad packets.
        """
        return self._batch(OP_PROTECT, buf, offsets, lengths, capacity, status)

    def unprotect_batch(self, buf, offsets, lengths, status=None):
        """Unprotect many SRTP packets in place; see :meth:`protect_batch`.

        A packet whose status is not OK must be dropped: its bytes are unspecified.
        """
        return self._batch(OP_UNPROTECT, buf, offsets, lengths, -1, status)

    def protect_rtcp_batch(self, buf, offsets, lengths, Py_ssize_t capacity, status=None):
        """Protect many RTCP packets in place; see :meth:`protect_batch`."""
        return self._batch(OP_PROTECT_RTCP, buf, offsets, lengths, capacity, status)

    def unprotect_rtcp_batch(self, buf, offsets, lengths, status=None):
        """Unprotect many SRTCP packets in place; see :meth:`unprotect_batch`."""
        return self._batch(OP_UNPROTECT_RTCP, buf, offsets, lengths, -1, status)

    # -- introspection ---------------------------------------------------------

    @property
    def rtp_overhead(self):
        """Bytes that protect() adds to an RTP packet (the tag)."""
        self._check_ready()
        return self.ctx.tag_len

    @property
    def rtcp_overhead(self):
        """Bytes that protect_rtcp() adds (tag plus E||index)."""
        self._check_ready()
        return self.ctx.tag_len + SRTCP_TRAILER

    @property
    def stream_count(self):
        """SSRCs this session has learned."""
        self._check_ready()
        return self.ctx.stream_count

    def ssrcs(self):
        """The SSRCs this session has learned, sorted."""
        self._check_ready()
        cdef uint32_t i
        return sorted(self.ctx.streams[i].ssrc for i in range(self.ctx.table_size)
                      if self.ctx.streams[i].in_use)

    def rtp_index(self, uint32_t ssrc):
        """Highest accepted RTP index (ROC * 65536 + SEQ) of `ssrc`, or None."""
        cdef srtp_stream_t *s
        self._check_ready()
        s = stream_find(self.ctx, ssrc)
        if s == NULL or not s.rtp.started:
            return None
        return s.rtp.top

    @property
    def stats(self):
        """Counters: packets and octets per operation, failures per status.

        Holds no key material; safe to log or export as metrics.
        """
        self._check_ready()
        out = {}
        for op in range(SRTP_OP_COUNT):
            out[_OP_NAMES[op] + "_packets"] = self.ctx.ok[op]
            out[_OP_NAMES[op] + "_octets"] = self.ctx.octets[op]
        errors = {}
        for code in range(1, SRTP_STATUS_COUNT):
            if self.ctx.errors[code]:
                errors[Status(code).name.lower()] = self.ctx.errors[code]
        out["errors"] = errors
        return out


def _bare_evp_seconds(profile, Py_ssize_t payload, Py_ssize_t count):
    """Seconds for `count` packets of the bare OpenSSL work, nothing else.

    The benchmark's ceiling: per packet, AES-128-CTR over the payload plus
    HMAC-SHA1 (from the same precomputed keyed digests) over header+payload+ROC,
    or one AES-128-GCM seal with the header as AAD. No parsing, no stream
    table, no replay window. Uses a throwaway all-zero key.
    """
    import time
    cdef Session s = Session(profile, bytes(16), bytes(Profile(profile).salt_length))
    cdef srtp_keyset_t *ks = &s.ctx.rtp
    cdef uint8_t iv[12]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    cdef uint8_t roc[4]
    cdef Py_ssize_t i
    cdef int aead = s.ctx.aead
    cdef int st = 0
    if payload < 0 or payload > 1400:
        raise ValueError("payload must be 0..1400 bytes")
    memset(s.scratch, 0, 1500)
    memset(iv, 0, 12)
    memset(roc, 0, 4)
    t0 = time.perf_counter()
    with nogil:
        for i in range(count):
            if aead:
                st |= gcm_seal(ks, iv, s.scratch, 12, NULL, 0, s.scratch + 12, payload,
                               s.scratch + 12 + payload)
            else:
                st |= aes_ctr(ks, 1, i, s.scratch + 12, payload)
                st |= hmac_sha1(ks, s.scratch, 12 + payload, roc, 4, mac)
    elapsed = time.perf_counter() - t0
    if st:
        raise SrtpError("OpenSSL failed during the bare EVP measurement")
    return elapsed
