# C-level interface of callsgw's SRTP core (module callsgw._native.srtp).
#
# Later native code (the forwarding engine) cimports this file to run SRTP
# without Python objects and without the GIL:
#
#     from callsgw._native.srtp cimport Session, srtp_ctx_t, srtp_unprotect_rtp
#     cdef srtp_ctx_t *ctx = (<Session>session).ctx
#     with nogil:
#         status = srtp_unprotect_rtp(ctx, pkt, length, capacity, &out_len)
#
# Every function takes one packet in place in `pkt`: `length` bytes of input
# in a slot of `capacity` bytes, writes the result back into the same slot and
# its size into `out_len`, and returns a status code (SRTP_OK or SRTP_ERR_*).
# They never raise, never read or write outside [pkt, pkt + capacity), and
# never touch Python. One srtp_ctx_t must not be used by two threads at once.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from callsgw._native.openssl cimport EVP_CIPHER_CTX, EVP_MD_CTX

cdef enum srtp_status:
    SRTP_OK = 0
    SRTP_ERR_AUTH = 1              # tag mismatch: wrong key, wrong profile, tampering
    SRTP_ERR_REPLAY = 2            # index already seen inside the replay window
    SRTP_ERR_REPLAY_OLD = 3        # index older than the replay window
    SRTP_ERR_TOO_SHORT = 4         # shorter than its fixed header (+ tag / trailer)
    SRTP_ERR_BAD_VERSION = 5       # RTP/RTCP version field is not 2
    SRTP_ERR_BAD_HEADER = 6        # CSRC list or header extension overruns the packet
    SRTP_ERR_TOO_LONG = 7          # longer than SRTP_MAX_PACKET
    SRTP_ERR_NO_SPACE = 8          # slot capacity cannot hold the tag / trailer
    SRTP_ERR_STREAM_LIMIT = 9      # a new SSRC would exceed the session's stream limit
    SRTP_ERR_INDEX_EXHAUSTED = 10  # 2^48 RTP / 2^31 SRTCP packets: the key must change
    SRTP_ERR_UNENCRYPTED = 11      # SRTCP with E=0: confidentiality is mandatory here
    SRTP_ERR_CRYPTO = 12           # OpenSSL reported an internal failure
    SRTP_ERR_BOUNDS = 13           # offset/length outside the buffer or slot capacity
    SRTP_ERR_NO_MEMORY = 14        # the stream table could not grow
    SRTP_STATUS_COUNT = 15

cdef enum:
    SRTP_MAX_PACKET = 65535        # largest packet accepted as input
    SRTP_MAX_WINDOW = 1024         # largest replay window, in packets
    SRTP_WINDOW_WORDS = 16         # SRTP_MAX_WINDOW / 64
    SRTP_OP_COUNT = 4              # protect, unprotect, protect_rtcp, unprotect_rtcp

# RFC 3711 section 3.3.2 replay list, as a ring bitmap: bit (i mod window)
# records index i for the `window` indices up to `top`.
ctypedef struct srtp_replay_t:
    uint64_t top                   # highest index accepted so far
    uint8_t started                # 0 until the first packet is accepted
    uint64_t bits[SRTP_WINDOW_WORDS]

# Per-SSRC state (RFC 3711 section 3.2.3 "cryptographic context" per stream).
# A stream is never removed: a reused SSRC continues its rollover counter.
ctypedef struct srtp_stream_t:
    uint32_t ssrc
    uint8_t in_use
    srtp_replay_t rtp              # index = ROC * 2^16 + SEQ (48 bits)
    srtp_replay_t rtcp             # SRTCP index (31 bits)

# Session keys for SRTP or for SRTCP, expanded once per session (RFC 3711
# section 4.3). Each packet only sets a new IV on these contexts and starts
# HMAC from copies of the keyed inner and outer digests.
ctypedef struct srtp_keyset_t:
    EVP_CIPHER_CTX *enc            # AES-128-CTR (both ways) or AES-128-GCM encrypt
    EVP_CIPHER_CTX *dec            # AES-128-GCM decrypt; NULL for CTR
    EVP_MD_CTX *hmac_inner         # SHA-1 after absorbing (auth_key ^ ipad); NULL for GCM
    EVP_MD_CTX *hmac_outer         # SHA-1 after absorbing (auth_key ^ opad); NULL for GCM
    EVP_MD_CTX *hmac_work          # scratch digest context
    uint8_t salt[16]               # session salt (14 bytes CM, 12 bytes GCM)

ctypedef struct srtp_ctx_t:
    int profile                    # IANA DTLS-SRTP protection profile value
    int aead                       # 1 for AEAD_AES_128_GCM
    uint32_t tag_len               # 10 (CM_HMAC_SHA1_80) or 16 (GCM)
    uint32_t window                # replay window size, a power of two <= SRTP_MAX_WINDOW
    int allow_repeat_tx            # let protect() repeat an index (RTX by resend)
    srtp_keyset_t rtp
    srtp_keyset_t rtcp
    srtp_stream_t *streams         # open-addressing table keyed by SSRC
    uint32_t table_size            # slots, a power of two
    uint32_t stream_count
    uint32_t max_streams
    uint64_t hash_xor              # per-session random keys of the SSRC hash, so a
    uint64_t hash_mul              # peer cannot choose colliding SSRCs (odd multiplier)
    uint64_t ok[SRTP_OP_COUNT]     # packets processed successfully, per operation
    uint64_t octets[SRTP_OP_COUNT] # input octets of those packets
    uint64_t errors[SRTP_STATUS_COUNT]  # failures, per status code

ctypedef int (*srtp_op_fn)(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                           size_t capacity, size_t *out_len) noexcept nogil

cdef int srtp_protect_rtp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                          size_t capacity, size_t *out_len) noexcept nogil
cdef int srtp_unprotect_rtp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                            size_t capacity, size_t *out_len) noexcept nogil
cdef int srtp_protect_rtcp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                           size_t capacity, size_t *out_len) noexcept nogil
cdef int srtp_unprotect_rtcp(srtp_ctx_t *ctx, uint8_t *pkt, size_t length,
                             size_t capacity, size_t *out_len) noexcept nogil

# Size increase of protect (and decrease of unprotect) for this context.
cdef size_t srtp_rtp_overhead(const srtp_ctx_t *ctx) noexcept nogil
cdef size_t srtp_rtcp_overhead(const srtp_ctx_t *ctx) noexcept nogil


cdef class Session:
    cdef srtp_ctx_t *ctx
    cdef readonly object profile
    cdef int ready                 # 1 once __init__ derived every key
    cdef int busy                  # set while a batch runs without the GIL
    cdef uint8_t *scratch          # per-packet API work buffer
    cdef int _check_ready(self) except -1
    cdef object _one(self, object data, int op)
    cdef object _batch(self, int op, object buf, object offsets, object lengths,
                       Py_ssize_t capacity, object status)
