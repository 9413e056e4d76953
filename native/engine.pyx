# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The native forwarding engine: the media port's per-packet path without Python.

Python stays the control plane; this module is the data plane of issue 6.
One :class:`Engine` owns the receive and send path of the media UDP socket:

1. ``recvmmsg`` takes a batch of datagrams (:data:`BATCH`).
2. Each is classified once by its first byte (RFC 7983 section 7; RTP and
   RTCP split per RFC 5761 section 4) and its source address is looked up in
   the session table (a keyed hash of family, address and port).
3. SRTP from a registered session is unprotected with the session's receive
   context (``srtp_unprotect_rtp`` of ``callsgw._native.srtp``; the same C
   call the batch API runs). The packet is checked (RFC 3550 header, RFC 8285
   elements), its stream found by (session, SSRC), the RFC 3550 A.1/A.8
   receive statistics updated, the decrypted original kept in the stream's
   retransmission history (tracks that negotiated NACK), and the RFC 6464
   audio level recorded.
4. For each route of the stream's source (a published track): the rules of
   the Python datapath (``callsgw.sfu.datapath.PythonDatapath``: sequence
   offset and continuity, sent window, SSRC/payload-type/extension-ID/MID
   rewrite as the router configured it) produce the
   subscriber's copy, which is protected once with the subscriber's transmit
   context and queued for ``sendmmsg``.

All of that runs with the GIL released, in one call per poll (one event-loop
callback per readable socket, at most ``max_batches`` batches). What the
control plane must see goes up to Python at the end of the poll, in one list:

* STUN, DTLS, unclassified datagrams, and anything from an unregistered
  address or from a session without keys (``UP_RAW``, with the address);
* decrypted RTP of a stream the engine does not know yet or with an RTX
  payload type (``UP_RTP``: the router identifies it and installs it);
* decrypted RTCP (``UP_RTCP``), except compounds made only of transport-cc
  and REMB feedback from a session that did not ask for them
  (:meth:`Engine.session_twcc` ``feedback_up``; dropped and counted here);
* ``UP_STARTED``: the first packet went out on a route of a video source
  (the router asks the publisher for a keyframe).

Transport-wide congestion control (issue #19): a session configured with
:meth:`Engine.session_twcc` logs each arriving transport-wide sequence number
with its kernel receive time, and stamps its own per-session sequence numbers
into the copies it sends (logging each send); Python drains both logs in one
call per session (:meth:`Engine.take_twcc`) to build feedback and estimate.

Tables are installed by the router through ``callsgw.sfu.native.NativeDatapath`` and
changed between polls, so a poll always sees a consistent table: the engine
and the control plane run on the same thread, and only the batch work drops
the GIL. Counters are numpy arrays that Python reads at any time
(:attr:`session_counters`, :attr:`stream_counters`, :attr:`route_counters`,
:attr:`stats`).

Ownership: the engine holds a reference to every registered
``callsgw.srtp.Session`` (so its ``srtp_ctx_t`` outlives its use here);
streams own their history buffers; routes own their sent windows.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, int32_t, int16_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, free, realloc
from libc.math cimport nearbyint, fabs, isnan, NAN
from cpython.bytes cimport PyBytes_FromStringAndSize

from callsgw._native.srtp cimport (
    Session, srtp_ctx_t, srtp_unprotect_rtp, srtp_unprotect_rtcp, srtp_protect_rtp,
    SRTP_OK, SRTP_ERR_AUTH, SRTP_ERR_REPLAY, SRTP_ERR_REPLAY_OLD,
)

import os
import socket

import numpy as np

from callsgw._native.net cimport (
    iovec, socklen_t, sa_family_t, sockaddr, sockaddr_storage, msghdr, mmsghdr, cmsghdr,
    CMSG_FIRSTHDR, CMSG_NXTHDR, CMSG_DATA, sendmmsg, recvmmsg, setsockopt, SOL_SOCKET,
    SO_TIMESTAMPNS, SCM_TIMESTAMPNS, MSG_DONTWAIT, MSG_TRUNC, AF_INET, AF_INET6,
    in_addr, sockaddr_in, in6_addr, sockaddr_in6,
)
from libc.errno cimport errno, EAGAIN, EINTR, EBADF, ENOTSOCK
from posix.time cimport clock_gettime, CLOCK_REALTIME, CLOCK_MONOTONIC, timespec, nanosleep
from posix.unistd cimport read, write, close

from callsgw._native.srtp cimport srtp_protect_rtcp, SRTP_MAX_PACKET, SRTP_ERR_TOO_LONG
from callsgw._native.srtp import error_for_status

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_create(pthread_t *t, const void *attr, void *(*fn)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    pthread_t pthread_self()
    int pthread_setname_np(pthread_t t, const char *name)

cdef extern from "<unistd.h>" nogil:
    int gettid()

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    uint32_t EPOLLIN

# The up ring is single-producer (the engine thread), single-consumer (the asyncio
# thread): each side writes only its own index, with release stores and acquire loads.
cdef extern from *:
    """
    static inline unsigned long long cgw_load_acquire(const unsigned long long *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void cgw_store_release(unsigned long long *p, unsigned long long v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline int cgw_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void cgw_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    unsigned long long cgw_load_acquire(const unsigned long long *p) noexcept nogil
    void cgw_store_release(unsigned long long *p, unsigned long long v) noexcept nogil
    int cgw_load_int(const int *p) noexcept nogil
    void cgw_store_int(int *p, int v) noexcept nogil

# -- sizes and codes --------------------------------------------------------------------

DEF BATCH = 64               # datagrams per recvmmsg
DEF SLOT = 2048              # receive slot: larger datagrams are dropped (as the Python mux does)
DEF OUT_SLOT = 2400          # send slot: a rewritten packet plus the SRTP tag
DEF OUT_MAX = 512            # queued datagrams before a sendmmsg is forced
DEF OUT_FLUSH = 48           # copies queued before the receive loop sends them (latency bound)
DEF UP_MAX = 1024            # datagrams handed to Python per poll
DEF HISTORY = 512            # = callsgw.sfu.datapath.HISTORY_SIZE
DEF LEVELS = 64              # audio levels kept per stream (a ring)
DEF MAX_SEEN = 8             # = callsgw.sfu.datapath.MAX_SEEN_SSRCS
DEF MAX_NACK = 256           # = callsgw.sfu.datapath.MAX_NACK_SEQUENCES
DEF CTRL = 64                # control buffer per received datagram (SO_TIMESTAMPNS)
DEF LAT_BUCKETS = 20
DEF RING = 4096              # up ring entries (engine thread -> Python); a full ring drops and counts
DEF TWCC_LOG = 1024          # transport-wide CC log entries per session and direction (a ring; overflow counted)
DEF ERROR_PAUSE_NS = 10000000  # after a socket error the thread waits 10 ms (an error that repeats never spins)

# Added latency of forwarded copies: kernel receive time (SO_TIMESTAMPNS on the media
# socket) to the moment sendmmsg handed the copy to the kernel, in microseconds. Bucket i
# counts copies with LATENCY_EDGES_US[i-1] < latency <= LATENCY_EDGES_US[i]; the last
# bucket is everything above the last edge.
LATENCY_EDGES_US = (10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000,
                    20000, 50000, 100000, 500000, 1000000)
cdef int64_t LAT_EDGES[19]
for _i, _edge in enumerate(LATENCY_EDGES_US):
    LAT_EDGES[_i] = _edge * 1000


def latency_percentile(histogram, double q):
    """Upper edge (seconds) of the latency bucket holding quantile ``q`` of a histogram
    (``Engine.latency_histogram`` or a difference of two); inf past the last edge, None if empty."""
    counts = np.asarray(histogram, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return LATENCY_EDGES_US[index] / 1e6 if index < len(LATENCY_EDGES_US) else float("inf")

_SRTP_OPS = ("protect", "unprotect", "protect_rtcp", "unprotect_rtcp")

cdef double SWITCH_IDLE = 1.0      # = callsgw.sfu.datapath.SWITCH_IDLE
cdef double RETRANSMIT_RATE = 300.0  # = callsgw.sfu.datapath.RETRANSMIT_RATE
cdef uint64_t BLOCKED = 1          # sent_ref: sent under an earlier rewrite, never again
cdef uint64_t NO_REF = 0           # sent_ref: nothing

# kinds of what goes up to Python
cdef enum:
    K_RAW = 0
    K_RTP = 1
    K_RTCP = 2
    K_STARTED = 3
UP_RAW = K_RAW
UP_RTP = K_RTP
UP_RTCP = K_RTCP
UP_STARTED = K_STARTED

# session counters (columns of session_counters)
SESSION_COUNTERS = (
    "rtp_in", "rtcp_in", "bytes_in", "rtp_out", "bytes_out",
    "auth_failures", "replays", "malformed", "srtp_other", "protect_failed",
    "rtcp_feedback_dropped", "up", "unknown_stream", "send_failed", "twcc_log_overflow",
)
DEF SC_RTP_IN = 0
DEF SC_RTCP_IN = 1
DEF SC_BYTES_IN = 2
DEF SC_RTP_OUT = 3
DEF SC_BYTES_OUT = 4
DEF SC_AUTH = 5
DEF SC_REPLAY = 6
DEF SC_MALFORMED = 7
DEF SC_SRTP_OTHER = 8
DEF SC_PROTECT_FAILED = 9
DEF SC_FEEDBACK_DROPPED = 10
DEF SC_UP = 11
DEF SC_UNKNOWN_STREAM = 12
DEF SC_SEND_FAILED = 13
DEF SC_TWCC_OVERFLOW = 14
DEF SC_COUNT = 15

STREAM_COUNTERS = ("packets_in", "bytes_in", "malformed_rtp", "unknown_payload_type", "rtx_up", "bad_audio_level")
DEF ST_PACKETS = 0
DEF ST_BYTES = 1
DEF ST_MALFORMED = 2
DEF ST_UNKNOWN_PT = 3
DEF ST_RTX_UP = 4
DEF ST_BAD_LEVEL = 5
DEF ST_COUNT = 6

# route counters: the first five are the router's per-route numbers, the rest its drop reasons
ROUTE_COUNTERS = (
    "packets_out", "bytes_out", "octets_out", "retransmits", "nack_misses",
    "payload_type_unmapped", "stale_ssrc", "too_old", "duplicate_sequence", "duplicate",
    "retransmit_mismatch", "retransmit_too_old", "rewrite_failed", "nack_out_of_range",
    "retransmit_rate_limited", "nack_truncated", "not_connected",
    "other_layer", "layer_paused", "layer_switches", "bad_vp8", "padding_sent",
)
DEF RC_PACKETS = 0
DEF RC_BYTES = 1
DEF RC_OCTETS = 2
DEF RC_RETRANSMITS = 3
DEF RC_NACK_MISSES = 4
DEF RC_PT_UNMAPPED = 5
DEF RC_STALE_SSRC = 6
DEF RC_TOO_OLD = 7
DEF RC_DUP_SEQ = 8
DEF RC_DUPLICATE = 9
DEF RC_RTX_MISMATCH = 10
DEF RC_RTX_TOO_OLD = 11
DEF RC_REWRITE_FAILED = 12
DEF RC_NACK_RANGE = 13
DEF RC_RATE_LIMITED = 14
DEF RC_NACK_TRUNCATED = 15
DEF RC_NOT_CONNECTED = 16
DEF RC_OTHER_LAYER = 17      # simulcast: a packet of a layer the route does not forward (not an error)
DEF RC_LAYER_PAUSED = 18     # simulcast: the route forwards no layer (route_select None)
DEF RC_LAYER_SWITCHES = 19   # simulcast: switches done (counted with the drops, as PythonDatapath does)
DEF RC_BAD_VP8 = 20          # a layered route's VP8 packet with a truncated payload descriptor
DEF RC_PADDING = 21          # padding-only packets sent to probe the subscriber's downlink (not a drop)
DEF RC_COUNT = 22

# RFC 3550 Appendix A.1 / A.8 receive statistics, laid out like STATS_DTYPE
ctypedef struct rstats_t:
    double jitter
    double last_sr_at        # NaN: no SR yet
    double last_arrival      # NaN: none
    int64_t transit
    int64_t has_transit
    int64_t clock_rate
    int64_t started
    int64_t probation
    int64_t base_seq
    int64_t max_seq
    int64_t bad_seq
    int64_t cycles
    int64_t received
    int64_t received_prior
    int64_t expected_prior
    int64_t last_sr

STATS_DTYPE = np.dtype([
    ("jitter", "f8"), ("last_sr_at", "f8"), ("last_arrival", "f8"),
    ("transit", "i8"), ("has_transit", "i8"), ("clock_rate", "i8"), ("started", "i8"),
    ("probation", "i8"), ("base_seq", "i8"), ("max_seq", "i8"), ("bad_seq", "i8"),
    ("cycles", "i8"), ("received", "i8"), ("received_prior", "i8"), ("expected_prior", "i8"),
    ("last_sr", "i8"),
])

DEF RTP_SEQ_MOD = 65536
DEF MAX_DROPOUT = 3000
DEF MAX_MISORDER = 100
DEF MIN_SEQUENTIAL = 2

# -- tables ---------------------------------------------------------------------------------

ctypedef struct addr_key_t:
    uint16_t family
    uint16_t port            # network order
    uint8_t ip[16]

# what one session's transport-wide sequence numbers did, drained by take_twcc (issue #19):
# arrivals from the peer (for the feedback the gateway sends it) or the gateway's own sends to it
# (for its downlink estimate), oldest overwritten when Python does not drain in time
ctypedef struct twcc_log_t:
    uint16_t seq[TWCC_LOG]
    uint16_t size[TWCC_LOG]  # datagram octets (sends only)
    int64_t ns[TWCC_LOG]     # CLOCK_REALTIME ns (the kernel's receive stamp for arrivals)
    int head                 # next entry written
    int count                # entries held

ctypedef struct session_t:
    int used
    uint32_t gen             # which opening of the slot (items in the up ring carry it)
    int has_addr
    uint64_t addr_serial     # when the address was installed: the latest owner of an address wins
    srtp_ctx_t *rx
    srtp_ctx_t *tx
    addr_key_t key
    sockaddr_storage sa
    socklen_t salen
    int twcc_in              # the peer's transport-wide sequence number element ID (arrivals logged), 0 = none
    int twcc_out             # the element ID our copies to this peer carry (restamped per session), 0 = none
    int feedback_up          # transport-cc and REMB compounds go up to Python (else dropped, counted)
    uint16_t twcc_next       # the next transport-wide sequence number sent to this peer
    twcc_log_t *arrivals     # NULL until twcc_in is set
    twcc_log_t *sent         # NULL until twcc_out is set

ctypedef struct source_t:
    int used
    int published
    int nack
    int level_id             # RFC 6464 element ID, 0 = none
    int video
    int64_t clock_rate
    int64_t media_ssrc       # -1 = none (the router's track.media_ssrc)
    int session              # the publisher's session slot (set when a stream is installed), -1 = none
    uint8_t media_pt[128]
    uint8_t rtx_pt[128]
    int32_t *routes
    int nroutes
    int routes_cap

ctypedef struct stream_t:
    int used
    int session
    int source
    uint32_t ssrc
    # history (tracks with NACK): the decrypted originals by seq % HISTORY
    uint8_t **hist_buf
    uint16_t *hist_len
    int32_t *hist_seq        # -1 = empty
    uint64_t *hist_ref       # identity of the stored original (see sent_ref)
    # RFC 6464 levels: a ring of (time, level)
    double level_t[LEVELS]
    uint8_t level_v[LEVELS]
    uint64_t level_count

ctypedef struct route_t:
    int used
    uint32_t gen             # which opening of the slot (UP_STARTED items carry it)
    int session              # the subscriber's session slot, -1 = none
    int source               # -1 = detached
    uint32_t out_ssrc
    int configured
    int16_t pt_map[128]      # -1 = not forwarded
    uint8_t ext_map[256]     # element ID -> new ID, 0 = dropped
    int mid_id               # 0 = none
    uint8_t mid_value[255]
    int mid_len
    int64_t active_ssrc      # -1 = none
    uint32_t seen[MAX_SEEN]
    int nseen
    uint32_t offset
    uint32_t ts_offset       # subscriber timestamp - publisher timestamp (mod 2^32), per input stream
    uint32_t last_ts         # the timestamp of the last packet forwarded (not a retransmission)
    int64_t highest          # -1 = none
    int64_t segment_start    # -1 = none
    int64_t pad_end          # the first number after the segment's latest padding, -1 = none
    int32_t bad_seq          # -1 = none
    double last_in_at
    int window
    int64_t *sent_ext
    uint64_t *sent_ref
    int32_t *sent_twcc       # the transport-wide number each sent index carried, -1 = not stamped
    int32_t *sent_off        # the sequence offset each sent index was sent under (padding moves it on), -1 = padding
    # simulcast (route_select, PythonDatapath's LayeredDatapath rules): one layer of the source forwarded
    int layered              # route_select was called: only ``current`` is forwarded
    int current              # the stream slot forwarded, -1 = none
    int pending              # the stream slot switched to at its next VP8 keyframe start, -1 = none
    int pid_resync           # the next forwarded packet starts a segment: compute the VP8 id offsets
    uint16_t pid_offset      # added to the VP8 PictureID (mod its 7 or 15 bits)
    uint8_t tl0_offset       # added to TL0PICIDX (mod 256)
    int32_t last_pid         # the last PictureID sent (-1 = none)
    int32_t last_tl0         # the last TL0PICIDX sent (-1 = none)
    int last_pt              # the payload type of the last packet forwarded (-1 = none), for padding
    int last_marker          # the newest packet forwarded ended a frame (RTP M bit): padding may follow
    int started
    double tokens
    double token_stamp       # NaN = never

ctypedef struct out_t:
    uint8_t data[OUT_SLOT]
    size_t length
    int session
    sockaddr_storage sa      # copied at queue time: a session closed before the send is harmless
    socklen_t salen
    int64_t rx_ns            # kernel receive time of the packet it copies (0: unknown, not timed)

ctypedef struct up_t:
    int kind
    int slot
    uint32_t gen             # the slot's generation when queued (threaded mode)
    uint16_t length
    addr_key_t key
    uint8_t data[SLOT]


cdef inline uint16_t load16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t load32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void store16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF

cdef inline void store32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


# -- RTP framing (callsgw.wire.rtp.layout / _elements, RFC 3550 5.1, RFC 8285) --------------

DEF ONE_BYTE = 0xBEDE
DEF MAX_ELEMENTS = 64

ctypedef struct layout_t:
    int profile              # -1 without an extension
    size_t ext_start
    size_t ext_end
    size_t header_length
    size_t padding

ctypedef struct element_t:
    size_t at
    int ext_id
    size_t value_at
    size_t length

cdef inline int is_two_byte(int profile) noexcept nogil:
    return (profile & 0xFFF0) == 0x1000

cdef int rtp_layout(const uint8_t *p, size_t size, layout_t *out) noexcept nogil:
    """0 on success, -1 for bad framing (wire.rtp.layout)."""
    cdef size_t pos, words
    if size < 12 or (p[0] >> 6) != 2:
        return -1
    pos = 12 + 4 * (p[0] & 0x0F)
    if pos > size:
        return -1
    out.profile = -1
    out.ext_start = pos
    out.ext_end = pos
    if p[0] & 0x10:
        if pos + 4 > size:
            return -1
        out.profile = load16(p + pos)
        words = load16(p + pos + 2)
        out.ext_start = pos + 4
        out.ext_end = out.ext_start + 4 * words
        if out.ext_end > size:
            return -1
        pos = out.ext_end
    out.padding = 0
    if p[0] & 0x20:
        out.padding = p[size - 1]
        if out.padding == 0 or out.padding > size - pos:
            return -1
    out.header_length = pos
    return 0

cdef int rtp_elements(const uint8_t *p, const layout_t *lay, element_t *els, int *count,
                      size_t *stop) noexcept nogil:
    """Walk the RFC 8285 block (wire.rtp._elements); -1 for an element past the block.

    One-byte form (section 4.2): ID in the high nibble, length - 1 in the low
    one, ID 15 ends the walk. Two-byte form (section 4.3): ID byte, length
    byte. ID 0 is padding in both. Other profiles have no elements.
    """
    cdef size_t pos = lay.ext_start, end = lay.ext_end, length, hdr
    cdef int ext_id, n = 0, one_byte = lay.profile == ONE_BYTE
    stop[0] = end
    count[0] = 0
    if not one_byte and not (lay.profile >= 0 and is_two_byte(lay.profile)):
        return 0
    hdr = 1 if one_byte else 2
    while pos < end:
        ext_id = (p[pos] >> 4) if one_byte else p[pos]
        if ext_id == 0:
            pos += 1
            continue
        if one_byte and ext_id == 15:
            stop[0] = pos
            break
        if pos + hdr > end:
            return -1
        length = ((p[pos] & 0x0F) + 1) if one_byte else p[pos + 1]
        if pos + hdr + length > end or n >= MAX_ELEMENTS:
            return -1
        els[n].at = pos
        els[n].ext_id = ext_id
        els[n].value_at = pos + hdr
        els[n].length = length
        n += 1
        pos += hdr + length
    count[0] = n
    return 0


ctypedef struct parsed_t:
    layout_t lay
    element_t els[MAX_ELEMENTS]
    int n                    # RFC 8285 elements (0 without a block of that profile)
    size_t stop              # end of the walk (a one-byte ID 15, else ext_end)

cdef inline int rtp_parse(const uint8_t *p, size_t size, parsed_t *out) noexcept nogil:
    """wire.rtp.validate: framing and RFC 8285 elements, parsed once per packet; -1 if malformed."""
    if rtp_layout(p, size, &out.lay) != 0:
        return -1
    return rtp_elements(p, &out.lay, out.els, &out.n, &out.stop)


cdef int element_find(const uint8_t *p, size_t size, int ext_id, size_t *value_at) noexcept nogil:
    """The offset of element ``ext_id``'s value when it is 2 bytes long (RFC 8285), else -1.

    The transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01
    section 2) is a 2-byte element; any other length is not one.
    """
    cdef parsed_t parsed
    cdef int i
    if ext_id <= 0 or rtp_parse(p, size, &parsed) != 0:
        return -1
    for i in range(parsed.n):
        if parsed.els[i].ext_id == ext_id:
            if parsed.els[i].length != 2:
                return -1
            value_at[0] = parsed.els[i].value_at
            return 0
    return -1


cdef inline void twcc_log(twcc_log_t *log, uint16_t seq, int64_t ns, size_t size, uint64_t *overflow) noexcept nogil:
    log.seq[log.head] = seq
    log.ns[log.head] = ns
    log.size[log.head] = <uint16_t>(size if size < 65535 else 65535)
    log.head = (log.head + 1) % TWCC_LOG
    if log.count < TWCC_LOG:
        log.count += 1
    else:
        overflow[0] += 1  # the oldest entry was overwritten


cdef inline int64_t realtime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


# -- VP8 payload descriptor (callsgw.wire.vp8, RFC 7741 section 4.2) ---------------------------

ctypedef struct vp8_t:
    int start                # S
    int partition            # PID
    int picture_id           # -1 = absent
    int picture_bits         # 7 or 15
    size_t picture_at
    int tl0                  # -1 = absent
    size_t tl0_at
    size_t size              # descriptor octets

cdef int vp8_parse(const uint8_t *p, size_t n, vp8_t *d) noexcept nogil:
    """callsgw.wire.vp8.parse: 0, or -1 for a descriptor the payload is too short for."""
    cdef size_t at = 1
    cdef uint8_t x
    if n < 1:
        return -1
    d.start = (p[0] & 0x10) != 0
    d.partition = p[0] & 0x07
    d.picture_id = -1
    d.picture_bits = 0
    d.tl0 = -1
    if p[0] & 0x80:
        if n < 2:
            return -1
        x = p[1]
        at = 2
        if x & 0x80:
            if n < at + 1:
                return -1
            d.picture_at = at
            if p[at] & 0x80:
                if n < at + 2:
                    return -1
                d.picture_id = ((p[at] & 0x7F) << 8) | p[at + 1]
                d.picture_bits = 15
                at += 2
            else:
                d.picture_id = p[at] & 0x7F
                d.picture_bits = 7
                at += 1
        if x & 0x40:
            if n < at + 1:
                return -1
            d.tl0 = p[at]
            d.tl0_at = at
            at += 1
        if x & 0x30:
            if n < at + 1:
                return -1
            at += 1
    d.size = at
    return 0

cdef int vp8_keyframe_start(const uint8_t *p, size_t n) noexcept nogil:
    """callsgw.wire.vp8.is_keyframe_start (a truncated descriptor is not one): S=1, PID=0, P=0."""
    cdef vp8_t d
    if vp8_parse(p, n, &d) != 0 or not d.start or d.partition != 0 or n <= d.size:
        return 0
    return (p[d.size] & 0x01) == 0


cdef int rewrite_for_route(const route_t *r, const uint8_t *src, size_t size, const parsed_t *pp,
                           uint8_t *dst, size_t capacity, int new_pt, uint16_t out_seq, uint32_t out_ts,
                           size_t *out_len) noexcept nogil:
    """callsgw.wire.rtp.rewrite with a route's rewrite, from src into dst; -1 on failure.

    Byte for byte what the Python router produces: IDs rewritten in place,
    dropped elements zeroed, one-byte ID 15 and what follows zeroed, and
    only a MID value of another length rebuilds the block (one-byte form
    when every element fits, else two-byte).
    """
    cdef const layout_t *lay = &pp.lay
    cdef const element_t *els = pp.els
    cdef int n = pp.n, i, new_id, one_byte, limit, rebuild = 0, all_fit
    cdef size_t stop = pp.stop, pos, blen, k, start, end, new_size
    cdef uint8_t block[2400]
    cdef const uint8_t *value
    cdef size_t vlen
    if size > capacity:
        return -1
    one_byte = lay.profile == ONE_BYTE
    if not one_byte and not (lay.profile >= 0 and is_two_byte(lay.profile)):
        n = -1  # no RFC 8285 block: untouched
    memcpy(dst, src, size)
    store32(dst + 8, r.out_ssrc)
    store16(dst + 2, out_seq)
    store32(dst + 4, out_ts)
    dst[1] = (dst[1] & 0x80) | (<uint8_t>new_pt)
    out_len[0] = size
    if n < 0:
        return 0
    limit = 14 if one_byte else 255
    # first pass in place; remember whether the MID value changes length
    for i in range(n):
        new_id = r.ext_map[els[i].ext_id]
        if new_id != 0 and not (1 <= new_id <= limit):
            new_id = 0
        if new_id == 0:
            memset(dst + els[i].at, 0, els[i].value_at + els[i].length - els[i].at)
            continue
        if r.mid_id != 0 and new_id == r.mid_id:
            if <size_t>r.mid_len == els[i].length:
                memcpy(dst + els[i].value_at, r.mid_value, r.mid_len)
            else:
                rebuild = 1
        if new_id != els[i].ext_id:
            if one_byte:
                dst[els[i].at] = (new_id << 4) | (dst[els[i].at] & 0x0F)
            else:
                dst[els[i].at] = new_id
    if stop < lay.ext_end:
        memset(dst + stop, 0, lay.ext_end - stop)
    if not rebuild:
        return 0
    # rebuild the block from the kept elements (wire.rtp._serialize_elements)
    all_fit = 1
    for i in range(n):
        new_id = r.ext_map[els[i].ext_id]
        if new_id == 0 or not (1 <= new_id <= limit):
            continue
        vlen = <size_t>r.mid_len if (r.mid_id != 0 and new_id == r.mid_id) else els[i].length
        if not (1 <= new_id <= 14 and 1 <= vlen <= 16):
            all_fit = 0
    blen = 0
    for i in range(n):
        new_id = r.ext_map[els[i].ext_id]
        if new_id == 0 or not (1 <= new_id <= limit):
            continue
        if r.mid_id != 0 and new_id == r.mid_id:
            value = r.mid_value
            vlen = r.mid_len
        else:
            value = src + els[i].value_at
            vlen = els[i].length
        if blen + 2 + vlen > 2300:
            return -1
        if all_fit:
            block[blen] = (new_id << 4) | (vlen - 1)
            blen += 1
        else:
            block[blen] = new_id
            block[blen + 1] = vlen
            blen += 2
        memcpy(block + blen, value, vlen)
        blen += vlen
    while blen % 4:
        block[blen] = 0
        blen += 1
    start = lay.ext_start - 4
    end = lay.ext_end
    new_size = start + 4 + blen + (size - end)
    if new_size > capacity:
        return -1
    # move the payload (from src, which is unchanged) and write the new block
    memcpy(dst + start + 4 + blen, src + end, size - end)
    store16(dst + start, ONE_BYTE if all_fit else (0x1000 if one_byte else <uint16_t>lay.profile))
    store16(dst + start + 2, <uint16_t>(blen // 4))
    memcpy(dst + start + 4, block, blen)
    out_len[0] = new_size
    return 0


cdef inline void init_seq(rstats_t *s, uint16_t seq) noexcept nogil:
    """RFC 3550 A.1 init_seq()."""
    s.base_seq = seq
    s.max_seq = seq
    s.bad_seq = RTP_SEQ_MOD + 1
    s.cycles = 0
    s.received = 0
    s.received_prior = 0
    s.expected_prior = 0


cdef void history_free(stream_t *st) noexcept nogil:
    """Free a stream's NACK history (each slot's buffer and the index arrays); safe when partial."""
    cdef int i
    if st.hist_buf != NULL:
        for i in range(HISTORY):
            free(st.hist_buf[i])
    free(st.hist_buf)
    free(st.hist_len)
    free(st.hist_seq)
    free(st.hist_ref)
    st.hist_buf = NULL
    st.hist_len = NULL
    st.hist_seq = NULL
    st.hist_ref = NULL


cdef inline int64_t extend(int64_t highest, uint16_t seq) noexcept nogil:
    """callsgw.sfu.datapath._extend: the extended number of seq nearest to highest."""
    cdef int64_t delta
    if highest < 0:
        return <int64_t>seq + 0x10000
    delta = (<int64_t>seq - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


cdef inline uint64_t mix(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef void *_engine_main(void *arg) noexcept nogil:
    """The engine thread: a borrowed pointer (Engine.__dealloc__ joins the thread before freeing)."""
    (<Engine>arg)._serve()
    return NULL


cdef class Engine:
    """The media port's data plane (see the module docstring)."""

    cdef int fd
    cdef int max_sessions, max_sources, max_streams, max_routes
    cdef session_t *sessions
    cdef source_t *sources
    cdef stream_t *streams
    cdef route_t *routes
    # address -> session and (session, ssrc) -> stream: open addressing, keyed hashes
    cdef int32_t *addr_table
    cdef uint32_t addr_mask
    cdef int32_t *stream_table
    cdef uint32_t stream_mask
    cdef uint64_t hash_key
    # numpy counters (Python reads them) and raw pointers into them
    cdef readonly object session_counters
    cdef readonly object stream_counters
    cdef readonly object route_counters
    cdef readonly object stats
    cdef uint64_t *sc
    cdef uint64_t *stc
    cdef uint64_t *rc
    cdef rstats_t *rs
    cdef uint64_t _totals[8]
    # keep the Session objects alive while their contexts are registered
    cdef list _rx_objects
    cdef list _tx_objects
    # I/O buffers
    cdef uint8_t *rx_buf
    cdef mmsghdr rx_msgs[BATCH]
    cdef iovec rx_iov[BATCH]
    cdef sockaddr_storage rx_addr[BATCH]
    cdef uint8_t rx_ctrl[BATCH][CTRL]
    cdef int64_t rx_ns             # receive time of the datagram being processed
    cdef readonly object latency_histogram
    cdef uint64_t *lat
    cdef out_t *out
    cdef int nout
    cdef mmsghdr *tx_msgs
    cdef iovec *tx_iov
    cdef up_t *up
    cdef int nup
    cdef uint64_t serial
    cdef uint64_t addr_serial
    cdef double now
    # the control plane's lock: held by the engine thread while it serves a wakeup (never
    # while it waits in the kernel), and by every control call while it reads or changes
    # the tables (never while Python code runs that could wait on anything)
    cdef pthread_mutex_t mutex
    cdef int mutex_ready
    cdef uint32_t gen_counter
    # high-water marks: one past the highest slot ever used per table (slots are taken lowest
    # first), so the scans under the lock cost the tables' peak use, not their sizes
    cdef int session_hwm, source_hwm, stream_hwm, route_hwm
    # threaded mode (start/stop)
    cdef int threaded              # 1 once start() ran: poll() is refused, items go through the ring
    cdef int joined
    cdef int stop_flag             # atomic: the thread leaves its loop
    cdef int thread_running        # atomic: 0 once the thread left its loop
    cdef int tid                   # the thread's kernel id (atomic; 0 until it runs)
    cdef int fatal                 # the socket is gone (EBADF/ENOTSOCK): the thread ends
    cdef pthread_t thread
    cdef int epfd
    cdef int wake_fd               # eventfd: wakes the thread (stop)
    cdef int _up_fd                # eventfd: the thread tells Python the ring has items
    cdef int max_batches
    cdef int pushed
    cdef double fixed_now          # NaN: the thread reads CLOCK_MONOTONIC; else this time (set_clock)
    cdef up_t *ring
    cdef unsigned long long ring_head  # written by the engine thread only
    cdef unsigned long long ring_tail  # written by the consumer (Python) only

    def __cinit__(self):
        self.sessions = NULL
        self.sources = NULL
        self.streams = NULL
        self.routes = NULL
        self.addr_table = NULL
        self.stream_table = NULL
        self.rx_buf = NULL
        self.out = NULL
        self.tx_msgs = NULL
        self.tx_iov = NULL
        self.up = NULL
        self.ring = NULL
        self.epfd = -1
        self.wake_fd = -1
        self._up_fd = -1
        self.fixed_now = NAN
        if pthread_mutex_init(&self.mutex, NULL) != 0:
            raise MemoryError()
        self.mutex_ready = 1

    def __init__(self, int fd, *, int max_sessions=4096, int max_sources=8192, int max_streams=16384,
                 int max_routes=65536):
        """Serve the UDP socket ``fd`` (non-blocking; the caller keeps it open)."""
        cdef int i
        cdef uint32_t size
        if fd < 0 or max_sessions < 1 or max_sources < 1 or max_streams < 1 or max_routes < 1:
            raise ValueError("bad engine limits")
        self.fd = fd
        self.max_sessions, self.max_sources = max_sessions, max_sources
        self.max_streams, self.max_routes = max_streams, max_routes
        self.sessions = <session_t *>calloc(max_sessions, sizeof(session_t))
        self.sources = <source_t *>calloc(max_sources, sizeof(source_t))
        self.streams = <stream_t *>calloc(max_streams, sizeof(stream_t))
        self.routes = <route_t *>calloc(max_routes, sizeof(route_t))
        size = 16
        while size < <uint32_t>(2 * max_sessions):
            size <<= 1
        self.addr_mask = size - 1
        self.addr_table = <int32_t *>malloc(size * sizeof(int32_t))
        size = 16
        while size < <uint32_t>(2 * max_streams):
            size <<= 1
        self.stream_mask = size - 1
        self.stream_table = <int32_t *>malloc(size * sizeof(int32_t))
        self.rx_buf = <uint8_t *>malloc(BATCH * SLOT)
        self.out = <out_t *>malloc(OUT_MAX * sizeof(out_t))
        self.tx_msgs = <mmsghdr *>calloc(OUT_MAX, sizeof(mmsghdr))
        self.tx_iov = <iovec *>calloc(OUT_MAX, sizeof(iovec))
        self.up = <up_t *>malloc(UP_MAX * sizeof(up_t))
        if (self.sessions == NULL or self.sources == NULL or self.streams == NULL or self.routes == NULL
                or self.addr_table == NULL or self.stream_table == NULL or self.rx_buf == NULL
                or self.out == NULL or self.tx_msgs == NULL or self.tx_iov == NULL or self.up == NULL):
            raise MemoryError()
        memset(self.addr_table, 0xFF, (self.addr_mask + 1) * sizeof(int32_t))
        memset(self.stream_table, 0xFF, (self.stream_mask + 1) * sizeof(int32_t))
        self.hash_key = int.from_bytes(os.urandom(8), "little") | 1
        if sizeof(rstats_t) != STATS_DTYPE.itemsize:
            raise RuntimeError("rstats_t and STATS_DTYPE differ")
        self.session_counters = np.zeros((max_sessions, SC_COUNT), dtype=np.uint64)
        self.stream_counters = np.zeros((max_streams, ST_COUNT), dtype=np.uint64)
        self.route_counters = np.zeros((max_routes, RC_COUNT), dtype=np.uint64)
        self.stats = np.zeros(max_streams, dtype=STATS_DTYPE)
        self.sc = <uint64_t *><size_t>self.session_counters.ctypes.data
        self.stc = <uint64_t *><size_t>self.stream_counters.ctypes.data
        self.rc = <uint64_t *><size_t>self.route_counters.ctypes.data
        self.rs = <rstats_t *><size_t>self.stats.ctypes.data
        self.latency_histogram = np.zeros(LAT_BUCKETS, dtype=np.uint64)
        self.lat = <uint64_t *><size_t>self.latency_histogram.ctypes.data
        cdef int one = 1
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one))  # best effort: untimed without
        self.rx_ns = 0
        self._rx_objects = [None] * max_sessions
        self._tx_objects = [None] * max_sessions
        for i in range(BATCH):
            self.rx_iov[i].iov_base = self.rx_buf + i * SLOT
            self.rx_iov[i].iov_len = SLOT
        memset(self._totals, 0, sizeof(self._totals))
        self.serial = 2
        self.nout = 0
        self.nup = 0

    def __dealloc__(self):
        cdef int i
        self._stop_thread()
        for i in (self.epfd, self.wake_fd, self._up_fd):
            if i >= 0:
                close(i)
        free(self.ring)
        if self.mutex_ready:
            pthread_mutex_destroy(&self.mutex)
        if self.streams != NULL:
            for i in range(self.max_streams):
                self._free_stream(i)
            free(self.streams)
        if self.routes != NULL:
            for i in range(self.max_routes):
                free(self.routes[i].sent_ext)
                free(self.routes[i].sent_ref)
                free(self.routes[i].sent_twcc)
                free(self.routes[i].sent_off)
            free(self.routes)
        if self.sources != NULL:
            for i in range(self.max_sources):
                free(self.sources[i].routes)
            free(self.sources)
        if self.sessions != NULL:
            for i in range(self.max_sessions):
                free(self.sessions[i].arrivals)
                free(self.sessions[i].sent)
        free(self.sessions)
        free(self.addr_table)
        free(self.stream_table)
        free(self.rx_buf)
        free(self.out)
        free(self.tx_msgs)
        free(self.tx_iov)
        free(self.up)

    # -- sessions ---------------------------------------------------------------------

    def session_open(self):
        """A free session slot (no address, no keys yet)."""
        cdef int i
        self._lock()
        try:
            for i in range(self.max_sessions):
                if not self.sessions[i].used:
                    memset(&self.sessions[i], 0, sizeof(session_t))
                    self.sessions[i].used = 1
                    self.session_hwm = max(self.session_hwm, i + 1)
                    self.gen_counter += 1
                    self.sessions[i].gen = self.gen_counter
                    memset(self.sc + <size_t>i * SC_COUNT, 0, SC_COUNT * sizeof(uint64_t))
                    return i
            raise RuntimeError("engine session table is full")
        finally:
            self._unlock()

    def session_keys(self, int slot, Session rx, Session tx):
        """Install a session's SRTP contexts (after DTLS, RFC 5764 section 4.2)."""
        cdef session_t *s = self._session(slot)
        self._lock()
        try:
            if not rx.ready or not tx.ready:
                raise ValueError("session is not keyed")
            s.rx = rx.ctx
            s.tx = tx.ctx
            self._rx_objects[slot] = rx
            self._tx_objects[slot] = tx
        finally:
            self._unlock()

    def session_clear_keys(self, int slot):
        cdef session_t *s = self._session(slot)
        self._lock()
        try:
            s.rx = NULL
            s.tx = NULL
            self._rx_objects[slot] = None
            self._tx_objects[slot] = None
        finally:
            self._unlock()

    def session_address(self, int slot, addr):
        """The ICE-validated remote address SRTP is accepted from and sent to (None: none)."""
        cdef session_t *s = self._session(slot)
        cdef addr_key_t key
        self._lock()
        try:
            if addr is None:
                s.has_addr = 0
            else:
                self._key_of(addr, &key, &s.sa, &s.salen)
                s.key = key
                s.has_addr = 1
                self.addr_serial += 1
                s.addr_serial = self.addr_serial
            self._rebuild_addr_table()
        finally:
            self._unlock()

    def session_close(self, int slot):
        cdef session_t *s = self._session(slot)
        cdef int i
        self._lock()
        try:
            free(s.arrivals)
            free(s.sent)
            memset(s, 0, sizeof(session_t))
            self._rx_objects[slot] = None
            self._tx_objects[slot] = None
            for i in range(self.route_hwm):
                if self.routes[i].used and self.routes[i].session == slot:
                    self.routes[i].session = -1
            # streams keep their slots until the router removes them, but a reuse of this
            # session slot must never find them: they belong to no session any more
            for i in range(self.stream_hwm):
                if self.streams[i].used and self.streams[i].session == slot:
                    self.streams[i].session = -1
            self._rebuild_addr_table()
            self._rebuild_stream_table()
        finally:
            self._unlock()

    def session_twcc(self, int slot, int in_id, int out_id, bint feedback_up):
        """Transport-wide congestion control for one session (issue #19).

        ``in_id``: the RFC 8285 element ID of the transport-wide sequence number
        in the peer's packets (draft-holmer-rmcat-transport-wide-cc-extensions-01
        section 2); each one's arrival (the kernel's receive time) is logged for
        the feedback the gateway sends back. ``out_id``: the ID in this peer's
        copies; the engine writes its own per-session sequence number there
        (whatever the publisher's was) and logs the send, for the downlink
        estimate. ``feedback_up``: this peer's transport-cc and REMB compounds
        go up to Python; else they are dropped and counted. 0 turns a part off.
        """
        cdef session_t *s = self._session(slot)
        if not (0 <= in_id <= 255 and 0 <= out_id <= 255):
            raise ValueError("header extension IDs are 0..255")
        self._lock()
        try:
            if in_id and s.arrivals == NULL:
                s.arrivals = <twcc_log_t *>calloc(1, sizeof(twcc_log_t))
                if s.arrivals == NULL:
                    raise MemoryError()
            if out_id and s.sent == NULL:
                s.sent = <twcc_log_t *>calloc(1, sizeof(twcc_log_t))
                if s.sent == NULL:
                    raise MemoryError()
            s.twcc_in = in_id
            s.twcc_out = out_id
            s.feedback_up = feedback_up
        finally:
            self._unlock()

    def take_twcc(self, int slot):
        """Drain a session's transport-wide logs, oldest first.

        Returns ``(arrivals, sent)``: ``arrivals`` a pair of numpy arrays
        (sequence numbers as uint16, CLOCK_REALTIME receive times in ns as
        int64); ``sent`` a triple (uint16 sequence numbers, int64 send times in
        ns, uint16 datagram sizes). Empty arrays when nothing was logged.
        """
        cdef session_t *s = self._session(slot)
        self._lock()
        try:
            return self._drain(s.arrivals, False), self._drain(s.sent, True)
        finally:
            self._unlock()

    cdef tuple _drain(self, twcc_log_t *log, bint sizes):
        cdef int n = log.count if log != NULL else 0
        cdef int i, k
        seq = np.empty(n, dtype=np.uint16)
        ns = np.empty(n, dtype=np.int64)
        size = np.empty(n if sizes else 0, dtype=np.uint16)
        cdef uint16_t[::1] vseq = seq
        cdef int64_t[::1] vns = ns
        cdef uint16_t[::1] vsize = size
        if n:
            k = (log.head - n + TWCC_LOG) % TWCC_LOG
            for i in range(n):
                vseq[i] = log.seq[k]
                vns[i] = log.ns[k]
                if sizes:
                    vsize[i] = log.size[k]
                k = (k + 1) % TWCC_LOG
            log.count = 0
        return (seq, ns, size) if sizes else (seq, ns)

    cdef session_t *_session(self, int slot) except NULL:
        if slot < 0 or slot >= self.max_sessions or not self.sessions[slot].used:
            raise ValueError(f"no session in slot {slot}")
        return &self.sessions[slot]

    cdef int _key_of(self, addr, addr_key_t *key, sockaddr_storage *sa, socklen_t *salen) except -1:
        host, port = addr[0], int(addr[1])
        if not 0 <= port <= 65535:
            raise ValueError("bad port")
        memset(key, 0, sizeof(addr_key_t))
        memset(sa, 0, sizeof(sockaddr_storage))
        cdef bytes packed
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        if ":" in host:
            packed = socket.inet_pton(socket.AF_INET6, host)
            key.family = AF_INET6
            memcpy(key.ip, <const char *>packed, 16)
            v6 = <sockaddr_in6 *>sa
            v6.sin6_family = AF_INET6
            v6.sin6_port = ((port & 0xFF) << 8) | (port >> 8)
            memcpy(v6.sin6_addr.s6_addr, <const char *>packed, 16)
            salen[0] = sizeof(sockaddr_in6)
        else:
            packed = socket.inet_pton(socket.AF_INET, host)
            key.family = AF_INET
            memcpy(key.ip, <const char *>packed, 4)
            v4 = <sockaddr_in *>sa
            v4.sin_family = AF_INET
            v4.sin_port = ((port & 0xFF) << 8) | (port >> 8)
            memcpy(&v4.sin_addr.s_addr, <const char *>packed, 4)
            salen[0] = sizeof(sockaddr_in)
        key.port = ((port & 0xFF) << 8) | (port >> 8)
        return 0

    cdef inline uint32_t _addr_hash(self, const addr_key_t *k) noexcept nogil:
        cdef uint64_t a, b, c
        memcpy(&a, k.ip, 8)
        memcpy(&b, k.ip + 8, 8)
        c = (<uint64_t>k.family << 16) | k.port
        return <uint32_t>(mix(a ^ self.hash_key) ^ mix(b + self.hash_key) ^ mix(c * self.hash_key))

    cdef void _rebuild_addr_table(self) noexcept:
        """One entry per address: of sessions sharing one, the latest installed (as UdpMux reassigns)."""
        cdef int i
        cdef int32_t j
        cdef uint32_t h
        memset(self.addr_table, 0xFF, (self.addr_mask + 1) * sizeof(int32_t))
        for i in range(self.session_hwm):
            if self.sessions[i].used and self.sessions[i].has_addr:
                h = self._addr_hash(&self.sessions[i].key) & self.addr_mask
                while True:
                    j = self.addr_table[h]
                    if j < 0:
                        self.addr_table[h] = i
                        break
                    if memcmp(&self.sessions[j].key, &self.sessions[i].key, sizeof(addr_key_t)) == 0:
                        if self.sessions[i].addr_serial > self.sessions[j].addr_serial:
                            self.addr_table[h] = i
                        break
                    h = (h + 1) & self.addr_mask

    cdef inline int _find_session(self, const addr_key_t *k) noexcept nogil:
        cdef uint32_t h = self._addr_hash(k) & self.addr_mask
        cdef int32_t slot
        while True:
            slot = self.addr_table[h]
            if slot < 0:
                return -1
            if memcmp(&self.sessions[slot].key, k, sizeof(addr_key_t)) == 0:
                return slot
            h = (h + 1) & self.addr_mask

    # -- sources (published tracks) ----------------------------------------------------

    def source_open(self):
        cdef int i
        self._lock()
        try:
            for i in range(self.max_sources):
                if not self.sources[i].used:
                    memset(&self.sources[i], 0, sizeof(source_t))
                    self.sources[i].used = 1
                    self.source_hwm = max(self.source_hwm, i + 1)
                    self.sources[i].media_ssrc = -1
                    self.sources[i].session = -1
                    return i
            raise RuntimeError("engine source table is full")
        finally:
            self._unlock()

    def source_configure(self, int slot, *, bint published, media_pts=(), rtx_pts=(), bint nack=False,
                         int level_id=0, int clock_rate=48000, bint video=False):
        """A published track's receive rules (the router's _Track.configure)."""
        cdef source_t *s = self._source(slot)
        self._lock()
        try:
            s.published = published
            memset(s.media_pt, 0, 128)
            memset(s.rtx_pt, 0, 128)
            for pt in media_pts:
                if 0 <= pt < 128:
                    s.media_pt[pt] = 1
            for pt in rtx_pts:
                if 0 <= pt < 128:
                    s.rtx_pt[pt] = 1
            s.nack = nack
            s.level_id = level_id if 0 < level_id < 256 else 0
            s.clock_rate = clock_rate if clock_rate > 0 else 48000
            s.video = video
            if not published:
                s.media_ssrc = -1
        finally:
            self._unlock()

    def source_close(self, int slot):
        cdef source_t *s = self._source(slot)
        cdef int i
        self._lock()
        try:
            for i in range(s.nroutes):
                self.routes[s.routes[i]].source = -1
            free(s.routes)
            memset(s, 0, sizeof(source_t))
        finally:
            self._unlock()

    def source_media_ssrc(self, int slot):
        cdef source_t *s = self._source(slot)
        self._lock()
        try:
            return None if s.media_ssrc < 0 else s.media_ssrc
        finally:
            self._unlock()

    cdef source_t *_source(self, int slot) except NULL:
        if slot < 0 or slot >= self.max_sources or not self.sources[slot].used:
            raise ValueError(f"no source in slot {slot}")
        return &self.sources[slot]

    # -- streams (published SSRCs) -----------------------------------------------------

    def stream_add(self, int session, uint32_t ssrc, int source):
        """Install a stream the router identified; returns its slot."""
        self._session(session)
        cdef source_t *src = self._source(source)
        cdef int i
        cdef stream_t *st
        self._lock()
        try:
            if self._find_stream(session, ssrc) >= 0:
                raise ValueError("stream already installed")
            for i in range(self.max_streams):
                if not self.streams[i].used:
                    st = &self.streams[i]
                    memset(st, 0, sizeof(stream_t))
                    st.used = 1
                    self.stream_hwm = max(self.stream_hwm, i + 1)
                    st.session = session
                    st.ssrc = ssrc
                    st.source = source
                    src.session = session
                    memset(self.stc + <size_t>i * ST_COUNT, 0, ST_COUNT * sizeof(uint64_t))
                    memset(&self.rs[i], 0, sizeof(rstats_t))
                    self.rs[i].last_sr_at = NAN
                    self.rs[i].last_arrival = NAN
                    self.rs[i].bad_seq = RTP_SEQ_MOD + 1
                    self._rebuild_stream_table()
                    return i
            raise RuntimeError("engine stream table is full")
        finally:
            self._unlock()

    def stream_remove(self, int slot):
        cdef int i
        self._lock()
        try:
            if slot < 0 or slot >= self.max_streams or not self.streams[slot].used:
                raise ValueError(f"no stream in slot {slot}")
            self._free_stream(slot)
            memset(&self.streams[slot], 0, sizeof(stream_t))
            for i in range(self.route_hwm):
                if self.routes[i].used and self.routes[i].current == slot:
                    self.routes[i].current = -1
                if self.routes[i].used and self.routes[i].pending == slot:
                    self.routes[i].pending = -1
            self._rebuild_stream_table()
        finally:
            self._unlock()

    cdef void _free_stream(self, int slot) noexcept:
        history_free(&self.streams[slot])

    def stream_levels(self, int slot, uint64_t since):
        """RFC 6464 levels recorded since count ``since``: (count now, [(time, level), ...])."""
        cdef stream_t *st = &self.streams[slot]
        cdef uint64_t first, k
        self._lock()
        try:
            if slot < 0 or slot >= self.max_streams or not st.used:
                raise ValueError(f"no stream in slot {slot}")
            first = since
            if st.level_count > LEVELS and first < st.level_count - LEVELS:
                first = st.level_count - LEVELS
            out = []
            k = first
            while k < st.level_count:
                out.append((st.level_t[k % LEVELS], st.level_v[k % LEVELS]))
                k += 1
            return st.level_count, out
        finally:
            self._unlock()

    def history_has(self, int slot, int seq):
        cdef stream_t *st = &self.streams[slot]
        self._lock()
        try:
            if slot < 0 or slot >= self.max_streams or not st.used:
                raise ValueError(f"no stream in slot {slot}")
            if seq < 0 or seq > 0xFFFF:
                raise ValueError("bad sequence number")
            return st.hist_seq != NULL and st.hist_seq[seq % HISTORY] == seq
        finally:
            self._unlock()

    cdef inline uint32_t _stream_hash(self, int session, uint32_t ssrc) noexcept nogil:
        return <uint32_t>mix((<uint64_t>session << 32 | ssrc) ^ self.hash_key)

    cdef void _rebuild_stream_table(self) noexcept:
        cdef int i
        cdef uint32_t h
        memset(self.stream_table, 0xFF, (self.stream_mask + 1) * sizeof(int32_t))
        for i in range(self.stream_hwm):
            if self.streams[i].used:
                h = self._stream_hash(self.streams[i].session, self.streams[i].ssrc) & self.stream_mask
                while self.stream_table[h] >= 0:
                    h = (h + 1) & self.stream_mask
                self.stream_table[h] = i

    cdef inline int _find_stream(self, int session, uint32_t ssrc) noexcept nogil:
        cdef uint32_t h = self._stream_hash(session, ssrc) & self.stream_mask
        cdef int32_t slot
        while True:
            slot = self.stream_table[h]
            if slot < 0:
                return -1
            if self.streams[slot].session == session and self.streams[slot].ssrc == ssrc:
                return slot
            h = (h + 1) & self.stream_mask

    # -- routes -----------------------------------------------------------------------

    def route_open(self, uint32_t out_ssrc, int session):
        """A route to a subscriber's section (SSRC ``out_ssrc``); session -1 until it has one."""
        cdef int i
        cdef route_t *r
        self._lock()
        try:
            self._check_session_slot(session)
            for i in range(self.max_routes):
                if not self.routes[i].used:
                    r = &self.routes[i]
                    free(r.sent_ext)
                    free(r.sent_ref)
                    free(r.sent_twcc)
                    free(r.sent_off)
                    memset(r, 0, sizeof(route_t))
                    r.used = 1
                    self.route_hwm = max(self.route_hwm, i + 1)
                    self.gen_counter += 1
                    r.gen = self.gen_counter
                    r.session = session
                    r.source = -1
                    r.current = -1
                    r.pending = -1
                    r.last_pid = -1
                    r.last_tl0 = -1
                    r.last_pt = -1
                    r.out_ssrc = out_ssrc
                    r.active_ssrc = -1
                    r.highest = -1
                    r.segment_start = -1
                    r.pad_end = -1
                    r.bad_seq = -1
                    r.tokens = RETRANSMIT_RATE
                    r.token_stamp = NAN
                    for k in range(128):
                        r.pt_map[k] = -1
                    memset(self.rc + <size_t>i * RC_COUNT, 0, RC_COUNT * sizeof(uint64_t))
                    return i
            raise RuntimeError("engine route table is full")
        finally:
            self._unlock()

    def route_session(self, int slot, int session):
        cdef route_t *r = self._route(slot)
        self._lock()
        try:
            self._check_session_slot(session)
            r.session = session
        finally:
            self._unlock()

    cdef int _check_session_slot(self, int session) except -1:
        """-1 (no session yet) or an index into the session table (_send_copy reads sessions[r.session])."""
        if session < -1 or session >= self.max_sessions:
            raise ValueError(f"bad session slot {session}")
        return 0

    def route_attach(self, int slot, int source):
        """The route receives the source's packets (the router's _consumers index)."""
        cdef route_t *r = self._route(slot)
        cdef source_t *s = self._source(source)
        cdef int i
        cdef int32_t *grown
        self._lock()
        try:
            if r.source == source:
                return
            if r.source >= 0:
                self._detach(slot)
            if s.nroutes == s.routes_cap:
                grown = <int32_t *>realloc(s.routes, (s.routes_cap * 2 + 4) * sizeof(int32_t))
                if grown == NULL:
                    raise MemoryError()
                s.routes = grown
                s.routes_cap = s.routes_cap * 2 + 4
            s.routes[s.nroutes] = slot
            s.nroutes += 1
            r.source = source
        finally:
            self._unlock()

    def route_detach(self, int slot):
        self._route(slot)
        self._lock()
        try:
            self._detach(slot)
        finally:
            self._unlock()

    cdef void _detach(self, int slot) noexcept:
        """route_detach's work (the caller holds the lock and checked the slot)."""
        cdef route_t *r = &self.routes[slot]
        cdef source_t *s
        cdef int i, j = 0
        if r.source < 0:
            return
        s = &self.sources[r.source]
        for i in range(s.nroutes):
            if s.routes[i] != slot:
                s.routes[j] = s.routes[i]
                j += 1
        s.nroutes = j
        r.source = -1

    def route_close(self, int slot):
        cdef route_t *r = self._route(slot)
        self._lock()
        try:
            self._detach(slot)
            free(r.sent_ext)
            free(r.sent_ref)
            free(r.sent_twcc)
            free(r.sent_off)
            memset(r, 0, sizeof(route_t))
        finally:
            self._unlock()

    def route_configure(self, int slot, pt_map, ext_ids, int mid_id, bytes mid_value, int window,
                        bint block):
        """The rewrite of the router's _configure: pt_map {in: out}, ext_ids {in: out} (others dropped).

        ``block``: earlier packets were rewritten differently, so no index
        sent so far may be sent again. A new ``window`` keeps the indexes
        still inside it, blocked.
        """
        cdef route_t *r = self._route(slot)
        cdef int64_t *ext
        cdef uint64_t *ref
        cdef int32_t *twcc
        cdef int32_t *off
        cdef int i
        cdef int64_t e
        self._lock()
        try:
            if window < 1 or window > 4096:
                raise ValueError("bad window")
            for i in range(128):
                r.pt_map[i] = -1
            for k, v in pt_map.items():
                if 0 <= k < 128 and 0 <= v < 128:
                    r.pt_map[k] = v
            memset(r.ext_map, 0, 256)
            for k, v in ext_ids.items():
                if 0 < k < 256 and 0 <= v < 256:
                    r.ext_map[k] = v
            r.mid_id = mid_id if 0 < mid_id < 256 else 0
            r.mid_len = min(len(mid_value), 255)
            memcpy(r.mid_value, <const char *>mid_value, r.mid_len)
            if block and r.sent_ref != NULL:
                for i in range(r.window):
                    if r.sent_ext[i] >= 0:
                        r.sent_ref[i] = BLOCKED
            if window != r.window:
                ext = <int64_t *>malloc(window * sizeof(int64_t))
                ref = <uint64_t *>malloc(window * sizeof(uint64_t))
                twcc = <int32_t *>malloc(window * sizeof(int32_t))
                off = <int32_t *>malloc(window * sizeof(int32_t))
                if ext == NULL or ref == NULL or twcc == NULL or off == NULL:
                    free(ext)
                    free(ref)
                    free(twcc)
                    free(off)
                    raise MemoryError()
                for i in range(window):
                    ext[i] = -1
                    ref[i] = NO_REF
                    twcc[i] = -1  # the kept indexes are blocked: never sent again
                    off[i] = 0  # kept indexes are blocked anyway
                if r.sent_ext != NULL:
                    for i in range(r.window):
                        e = r.sent_ext[i]
                        if e >= 0 and (r.highest < 0 or e > r.highest - window):
                            ext[e % window] = e
                            ref[e % window] = BLOCKED
                free(r.sent_ext)
                free(r.sent_ref)
                free(r.sent_twcc)
                free(r.sent_off)
                r.sent_ext = ext
                r.sent_ref = ref
                r.sent_twcc = twcc
                r.sent_off = off
                r.window = window
            r.configured = 1
        finally:
            self._unlock()

    def route_select(self, int slot, int stream):
        """Simulcast: forward ``stream`` (a stream slot of the route's source; -1: nothing) on this route.

        The rules of ``callsgw.sfu.datapath.LayeredDatapath.route_select``: the
        route forwards only its current stream; another one becomes pending and
        takes over at its next VP8 keyframe start, where sequence numbers,
        timestamps, PictureID and TL0PICIDX continue the route's.
        """
        cdef route_t *r = self._route(slot)
        self._lock()
        try:
            if stream >= 0 and (stream >= self.max_streams or not self.streams[stream].used
                                or r.source < 0 or self.streams[stream].source != r.source):
                raise ValueError("route_select: the stream is not one of the route's source")
            r.layered = 1
            if stream < 0:
                r.current = -1
                r.pending = -1
            elif stream == r.current:
                r.pending = -1
            else:
                r.pending = stream
        finally:
            self._unlock()

    def route_padding(self, int slot, int count, int size):
        """Send ``count`` RTP padding-only packets of ``size`` padding octets on a route (issue #19 probes).

        RFC 3550 section 5.1 padding packets: the route's SSRC, last payload
        type and timestamp, the next sequence numbers (later media continues
        after them; a NACK for a packet sent before them finds it under the
        offset it was sent with: sent_off), and the subscriber session's next
        transport-wide numbers in an RFC 8285 element (logged as sends), so
        the subscriber's transport-cc feedback measures them. Never
        retransmitted. Only between frames (PythonDatapath.route_padding).
        Returns how many were queued: none on a route that has sent nothing
        yet, whose session does not stamp transport-wide numbers, or that is
        inside a frame. Sent on :meth:`flush`.
        """
        cdef route_t *r = self._route(slot)
        cdef session_t *s
        cdef out_t *o
        cdef int i, k, sent = 0, wslot, id_
        cdef size_t n, at
        cdef int64_t ext
        cdef uint16_t seq
        if count < 0 or count > 1024 or size < 1 or size > 255:
            raise ValueError("padding: 0..1024 packets of 1..255 octets")
        self._lock()
        try:
            self.rx_ns = 0  # not timed
            if r.session < 0 or r.highest < 0 or r.last_pt < 0 or r.sent_ext == NULL:
                return 0
            if not r.last_marker and not (r.layered and r.current < 0 and r.pending < 0):
                return 0  # inside a frame (PythonDatapath.route_padding)
            s = &self.sessions[r.session]
            if not s.used or not s.twcc_out or s.sent == NULL:
                return 0
            id_ = s.twcc_out
            for i in range(count):
                if self.nout >= OUT_MAX:
                    self._send_all()
                o = &self.out[self.nout]
                ext = r.highest + 1
                o.data[0] = 0x80 | 0x20 | 0x10  # V=2, P, X
                o.data[1] = <uint8_t>(r.last_pt & 0x7F)
                store16(o.data + 2, <uint16_t>(ext & 0xFFFF))
                store32(o.data + 4, r.last_ts)
                store32(o.data + 8, r.out_ssrc)
                if id_ <= 14:  # RFC 8285 4.2 one-byte form: ID, L=1, two bytes, one byte of padding
                    store16(o.data + 12, ONE_BYTE)
                    store16(o.data + 14, 1)
                    o.data[16] = <uint8_t>((id_ << 4) | 1)
                    at = 17
                    o.data[19] = 0
                else:  # 4.3 two-byte form: ID, length 2, two bytes
                    store16(o.data + 12, 0x1000)
                    store16(o.data + 14, 1)
                    o.data[16] = <uint8_t>id_
                    o.data[17] = 2
                    at = 18
                seq = s.twcc_next
                s.twcc_next = <uint16_t>(seq + 1)
                store16(o.data + at, seq)
                n = 20
                for k in range(size - 1):
                    o.data[n + k] = 0
                o.data[n + size - 1] = <uint8_t>size
                n += size
                twcc_log(s.sent, seq, realtime_ns(), n, self.sc + <size_t>r.session * SC_COUNT + SC_TWCC_OVERFLOW)
                wslot = <int>(ext % r.window)
                r.sent_ext[wslot] = ext
                r.sent_ref[wslot] = BLOCKED
                r.sent_twcc[wslot] = seq
                r.sent_off[wslot] = -1  # padding
                r.highest = ext
                r.offset = <uint32_t>((r.offset + 1) & 0xFFFF)  # media continues after the padding
                self._send_copy(r, slot, o, n)
                sent += 1
            if sent:
                r.pad_end = r.highest + 1  # NACKs for the padding, or for numbers before it never sent: out of range
                self.rc[<size_t>slot * RC_COUNT + RC_PADDING] += sent
            return sent
        finally:
            self._unlock()

    def route_state(self, int slot):
        """(active_ssrc, highest, offset, segment_start, started, window, ts_offset) as Python values."""
        cdef route_t *r = self._route(slot)
        self._lock()
        try:
            return (
                None if r.active_ssrc < 0 else r.active_ssrc,
                None if r.highest < 0 else r.highest,
                r.offset,
                None if r.segment_start < 0 else r.segment_start,
                bool(r.started),
                r.window,
                r.ts_offset,
            )
        finally:
            self._unlock()

    cdef route_t *_route(self, int slot) except NULL:
        if slot < 0 or slot >= self.max_routes or not self.routes[slot].used:
            raise ValueError(f"no route in slot {slot}")
        return &self.routes[slot]

    # -- the data path ------------------------------------------------------------------

    cdef int _up(self, int kind, int slot, const addr_key_t *key, const uint8_t *data, size_t length) noexcept nogil:
        cdef up_t *u
        cdef unsigned long long head
        if self.threaded:
            head = self.ring_head
            if head - cgw_load_acquire(&self.ring_tail) >= RING or length > SLOT:
                self._totals[1] += 1  # dropped: Python has not taken the ring's items yet
                return -1
            u = &self.ring[head % RING]
            u.kind = kind
            u.slot = slot
            if kind == K_STARTED:
                u.gen = self.routes[slot].gen
            else:
                u.gen = self.sessions[slot].gen if slot >= 0 else 0
            u.length = <uint16_t>length
            if key != NULL:
                u.key = key[0]
            else:
                memset(&u.key, 0, sizeof(addr_key_t))
            if length:
                memcpy(u.data, data, length)
            cgw_store_release(&self.ring_head, head + 1)
            self.pushed += 1
            return 0
        if self.nup >= UP_MAX or length > SLOT:
            self._totals[1] += 1  # dropped: Python's share of this poll is full
            return -1
        u = &self.up[self.nup]
        self.nup += 1
        u.kind = kind
        u.slot = slot
        u.length = <uint16_t>length
        if key != NULL:
            u.key = key[0]
        else:
            memset(&u.key, 0, sizeof(addr_key_t))
        if length:
            memcpy(u.data, data, length)
        return 0

    cdef void _send_all(self) noexcept nogil:
        """sendmmsg of the queued datagrams (what the kernel refuses is counted and dropped)."""
        cdef int i, done = 0, n
        for i in range(self.nout):
            self.tx_iov[i].iov_base = self.out[i].data
            self.tx_iov[i].iov_len = self.out[i].length
            memset(&self.tx_msgs[i].msg_hdr, 0, sizeof(msghdr))
            self.tx_msgs[i].msg_hdr.msg_name = &self.out[i].sa
            self.tx_msgs[i].msg_hdr.msg_namelen = self.out[i].salen
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[i]
            self.tx_msgs[i].msg_hdr.msg_iovlen = 1
        cdef timespec ts
        cdef int64_t now_ns, delta
        cdef int b, k
        while done < self.nout:
            n = sendmmsg(self.fd, self.tx_msgs + done, self.nout - done, MSG_DONTWAIT)
            if n > 0:
                clock_gettime(CLOCK_REALTIME, &ts)
                now_ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
                for k in range(done, done + n):
                    if self.out[k].rx_ns > 0:
                        delta = now_ns - self.out[k].rx_ns
                        b = 0
                        while b < LAT_BUCKETS - 1 and delta > LAT_EDGES[b]:
                            b += 1
                        self.lat[b] += 1
                done += n
                continue
            if n < 0 and errno != EAGAIN:
                # this datagram was refused (e.g. an unreachable address): skip it, send the rest
                self.sc[<size_t>self.out[done].session * SC_COUNT + SC_SEND_FAILED] += 1
                done += 1
                continue
            for i in range(done, self.nout):  # the socket buffer is full: drop, never block
                self.sc[<size_t>self.out[i].session * SC_COUNT + SC_SEND_FAILED] += 1
            break
        self.nout = 0

    cdef void _send_copy(self, route_t *r, int rslot, out_t *o, size_t n) noexcept nogil:
        """Protect a rewritten copy (in ``o``) with the subscriber's keys and queue it."""
        cdef session_t *s
        cdef size_t protected_len = 0
        if r.session < 0 or not self.sessions[r.session].used or self.sessions[r.session].tx == NULL \
                or not self.sessions[r.session].has_addr:
            self.rc[<size_t>rslot * RC_COUNT + RC_NOT_CONNECTED] += 1
            return
        s = &self.sessions[r.session]
        if srtp_protect_rtp(s.tx, o.data, n, OUT_SLOT, &protected_len) != SRTP_OK:
            self.sc[<size_t>r.session * SC_COUNT + SC_PROTECT_FAILED] += 1
            return
        o.length = protected_len
        o.session = r.session
        o.rx_ns = self.rx_ns
        memcpy(&o.sa, &s.sa, sizeof(sockaddr_storage))
        o.salen = s.salen
        self.nout += 1
        self.sc[<size_t>r.session * SC_COUNT + SC_RTP_OUT] += 1
        self.sc[<size_t>r.session * SC_COUNT + SC_BYTES_OUT] += protected_len

    cdef inline int _twcc_stamp(self, route_t *r, int slot, uint8_t *p, size_t n, int again) noexcept nogil:
        """The subscriber's transport-wide number in a rewritten copy (PythonDatapath._stamp).

        ``again``: this index was sent before. A first send gets the session's next number (logged with its size for
        the downlink estimate). A retransmission is the same SRTP index again,
        so it must be byte-identical (AES-GCM): it carries the number its index
        carried the first time, and is refused (-1) when that is no longer
        possible. Copies without the element, or to a session that does not
        stamp, keep the publisher's value. Returns the number written, -1 for
        none, -2 to refuse.
        """
        cdef session_t *s
        cdef size_t at
        cdef int stamp = 0
        cdef uint16_t seq
        if r.session >= 0:
            s = &self.sessions[r.session]
            stamp = s.used and s.twcc_out and s.sent != NULL and element_find(p, n, s.twcc_out, &at) == 0
        if again:  # this index was sent before (only a retransmission gets here)
            if r.sent_twcc[slot] < 0:
                return -1  # sent unstamped: the same bytes again
            if not stamp:
                return -2
            store16(p + at, <uint16_t>r.sent_twcc[slot])
            return -1
        if not stamp:
            return -1
        seq = s.twcc_next
        s.twcc_next = <uint16_t>(seq + 1)
        store16(p + at, seq)
        twcc_log(s.sent, seq, realtime_ns(), n, self.sc + <size_t>r.session * SC_COUNT + SC_TWCC_OVERFLOW)
        return seq

    cdef inline void _resync(self, route_t *r, uint16_t seq) noexcept nogil:
        """A new input stream on the route: continue the subscriber's numbers (PythonDatapath._resync)."""
        if r.highest < 0:
            r.offset = 0
        else:
            r.offset = <uint32_t>(((r.highest + 1) - seq) & 0xFFFF)
        r.segment_start = -1
        r.pad_end = -1
        r.bad_seq = -1

    cdef int _forward(self, route_t *r, int rslot, const uint8_t *pkt, size_t length, const parsed_t *pp,
                      int pt, uint16_t seq, uint32_t in_ssrc, uint64_t ref, int nack,
                      int retransmit, int switch=0, int32_t offset=-1) noexcept nogil:
        """callsgw.sfu.datapath.PythonDatapath._forward for one route, then protect and queue. 0 when forwarded.

        ``offset``: a retransmission's sequence offset (the one it was first sent under), -1: the route's."""
        cdef uint64_t *c = self.rc + <size_t>rslot * RC_COUNT
        cdef int new_pt, i, seen
        cdef uint16_t out_seq
        cdef uint32_t out_ts
        cdef int64_t ext, gap
        cdef int slot, twcc, vp8
        cdef out_t *o
        cdef size_t n = 0, body = 0
        cdef vp8_t d
        cdef uint8_t *payload
        cdef int value
        if not r.configured or r.sent_ext == NULL:
            c[RC_PT_UNMAPPED] += 1
            return -1
        new_pt = r.pt_map[pt]
        if new_pt < 0:
            c[RC_PT_UNMAPPED] += 1
            return -1
        if <int64_t>in_ssrc != r.active_ssrc or switch:  # a layer switch resyncs even onto the same SSRC
            if retransmit:
                return -1
            seen = 0
            for i in range(r.nseen):
                if r.seen[i] == in_ssrc:
                    seen = 1
            if not switch and r.active_ssrc >= 0 and seen and self.now - r.last_in_at < SWITCH_IDLE:
                c[RC_STALE_SSRC] += 1
                return -1
            if r.active_ssrc >= 0 and r.started and r.source >= 0:
                # PythonDatapath._forward: the new stream's timestamps continue the route's
                gap = <int64_t>nearbyint((self.now - r.last_in_at) * self.sources[r.source].clock_rate)
                if gap < 1:
                    gap = 1
                r.ts_offset = <uint32_t>(r.last_ts + <uint32_t>gap - load32(pkt + 4))  # mod 2^32
            self._resync(r, seq)
            r.active_ssrc = in_ssrc
            r.pid_resync = 1
            if not seen:
                if r.nseen == MAX_SEEN:
                    for i in range(MAX_SEEN - 1):
                        r.seen[i] = r.seen[i + 1]
                    r.nseen -= 1
                r.seen[r.nseen] = in_ssrc
                r.nseen += 1
        out_seq = <uint16_t>((seq + (r.offset if offset < 0 else <uint32_t>offset)) & 0xFFFF)
        ext = extend(r.highest, out_seq)
        if r.highest >= 0 and ext <= r.highest - r.window:
            if retransmit:
                c[RC_RTX_TOO_OLD] += 1
                return -1
            if <int32_t>seq != r.bad_seq:
                r.bad_seq = (seq + 1) & 0xFFFF
                c[RC_TOO_OLD] += 1
                return -1
            self._resync(r, seq)
            out_seq = <uint16_t>((seq + r.offset) & 0xFFFF)
            ext = extend(r.highest, out_seq)
        slot = <int>(ext % r.window)
        if r.sent_ext[slot] == ext:
            if r.sent_ref[slot] != ref or ref == BLOCKED:
                c[RC_RTX_MISMATCH if retransmit else RC_DUP_SEQ] += 1
                return -1
            if not retransmit:
                c[RC_DUPLICATE] += 1
                return -1
        # rewrite first (a failure changes nothing, as in the router), then commit the
        # route's state and count the copy, then protect and queue it for the subscriber
        if self.nout >= OUT_MAX:
            self._send_all()
        o = &self.out[self.nout]
        out_ts = <uint32_t>(load32(pkt + 4) + r.ts_offset)  # mod 2^32
        vp8 = r.layered and r.source >= 0 and self.sources[r.source].video
        if vp8:
            body = length - pp.lay.header_length  # the payload and its padding: the same in the copy
            if vp8_parse(pkt + pp.lay.header_length, body - pp.lay.padding, &d) != 0:
                c[RC_BAD_VP8] += 1
                return -1
            if r.pid_resync and not retransmit:
                # a new segment (RFC 7741 4.2): its first PictureID/TL0PICIDX follows the last one sent
                r.pid_resync = 0
                r.pid_offset = 0 if d.picture_id < 0 or r.last_pid < 0 else \
                    <uint16_t>((r.last_pid + 1 - d.picture_id) & 0x7FFF)
                r.tl0_offset = 0 if d.tl0 < 0 or r.last_tl0 < 0 else <uint8_t>((r.last_tl0 + 1 - d.tl0) & 0xFF)
        if rewrite_for_route(r, pkt, length, pp, o.data, OUT_SLOT - 64, new_pt, out_seq, out_ts, &n) != 0:
            c[RC_REWRITE_FAILED] += 1
            return -1
        if vp8 and (r.pid_offset or r.tl0_offset):
            payload = o.data + n - body
            if d.picture_id >= 0:
                if d.picture_bits == 15:
                    value = (d.picture_id + r.pid_offset) & 0x7FFF
                    payload[d.picture_at] = <uint8_t>(0x80 | (value >> 8))
                    payload[d.picture_at + 1] = <uint8_t>(value & 0xFF)
                else:
                    payload[d.picture_at] = <uint8_t>((d.picture_id + r.pid_offset) & 0x7F)
            if d.tl0 >= 0:
                payload[d.tl0_at] = <uint8_t>((d.tl0 + r.tl0_offset) & 0xFF)
        twcc = self._twcc_stamp(r, slot, o.data, n, r.sent_ext[slot] == ext)
        if twcc == -2:
            c[RC_RTX_MISMATCH] += 1
            return -1
        if r.sent_ext[slot] != ext:
            r.sent_ext[slot] = ext
            r.sent_ref[slot] = ref if nack else BLOCKED
            r.sent_twcc[slot] = twcc
            r.sent_off[slot] = <int32_t>(r.offset & 0xFFFF)
        if r.highest < 0 or ext > r.highest:
            r.highest = ext
        if r.segment_start < 0 or ext < r.segment_start:
            r.segment_start = ext
        if not retransmit:
            r.last_in_at = self.now
            r.last_ts = out_ts
            r.last_pt = new_pt
            if ext == r.highest:
                r.last_marker = (pkt[1] & 0x80) != 0
            if vp8 and ext == r.highest:  # the newest packet's ids are "the last sent"
                if d.picture_id >= 0:
                    r.last_pid = (d.picture_id + r.pid_offset) & (0x7FFF if d.picture_bits == 15 else 0x7F)
                if d.tl0 >= 0:
                    r.last_tl0 = (d.tl0 + r.tl0_offset) & 0xFF
            c[RC_PACKETS] += 1
            c[RC_BYTES] += n
            c[RC_OCTETS] += length - pp.lay.header_length - pp.lay.padding
        else:
            c[RC_RETRANSMITS] += 1
        self._send_copy(r, rslot, o, n)
        return 0

    cdef void _update_stats(self, int sslot, int64_t clock_rate, uint16_t seq, uint32_t ts) noexcept nogil:
        """callsgw.sfu.rtcp.ReceiveStats.update (RFC 3550 A.1, A.8)."""
        cdef rstats_t *s = &self.rs[sslot]
        cdef int64_t udelta, transit, d
        cdef int accepted = 0
        if not s.started:
            s.started = 1
            s.clock_rate = clock_rate
            init_seq(s, seq)
            s.max_seq = (seq - 1) & 0xFFFF
            s.probation = MIN_SEQUENTIAL
        udelta = (<int64_t>seq - s.max_seq) & 0xFFFF
        if s.probation:
            if seq == ((s.max_seq + 1) & 0xFFFF):
                s.probation -= 1
                s.max_seq = seq
                if s.probation == 0:
                    init_seq(s, seq)
                    s.received = 1
                    accepted = 1
            else:
                s.probation = MIN_SEQUENTIAL - 1
                s.max_seq = seq
        elif udelta < MAX_DROPOUT:
            if seq < s.max_seq:
                s.cycles += RTP_SEQ_MOD  # wrapped
            s.max_seq = seq
            s.received += 1
            accepted = 1
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == s.bad_seq:
                init_seq(s, seq)  # two sequential packets after a big jump: the sender restarted
                s.received = 1
                accepted = 1
            else:
                s.bad_seq = (seq + 1) & 0xFFFF
        else:
            s.received += 1  # a duplicate or reordered packet, counted
            accepted = 1
        if not accepted:
            return
        s.last_arrival = self.now
        transit = <int64_t>nearbyint(self.now * s.clock_rate) - <int64_t>ts
        if s.has_transit:
            d = (transit - s.transit) & 0xFFFFFFFFLL
            if d & 0x80000000LL:
                d -= (<int64_t>1 << 32)
            s.jitter += (fabs(<double>d) - s.jitter) / 16.0
        s.transit = transit
        s.has_transit = 1

    cdef uint64_t _store(self, stream_t *st, const uint8_t *pkt, size_t length, uint16_t seq) noexcept nogil:
        """Keep the decrypted original for NACKs; returns its identity (a duplicate never replaces it)."""
        cdef int i = seq % HISTORY
        cdef uint8_t *buf
        self.serial += 1
        if st.hist_buf == NULL:
            st.hist_buf = <uint8_t **>calloc(HISTORY, sizeof(uint8_t *))
            st.hist_len = <uint16_t *>calloc(HISTORY, sizeof(uint16_t))
            st.hist_seq = <int32_t *>malloc(HISTORY * sizeof(int32_t))
            st.hist_ref = <uint64_t *>calloc(HISTORY, sizeof(uint64_t))
            if st.hist_buf == NULL or st.hist_len == NULL or st.hist_seq == NULL or st.hist_ref == NULL:
                history_free(st)
                return self.serial
            memset(st.hist_seq, 0xFF, HISTORY * sizeof(int32_t))
        if st.hist_seq[i] == seq:
            return self.serial  # a duplicate: different identity, never sent twice
        if st.hist_buf[i] == NULL:
            st.hist_buf[i] = <uint8_t *>malloc(SLOT)
            if st.hist_buf[i] == NULL:
                return self.serial
        if length > SLOT:
            return self.serial
        buf = st.hist_buf[i]
        memcpy(buf, pkt, length)
        st.hist_len[i] = <uint16_t>length
        st.hist_seq[i] = seq
        st.hist_ref[i] = self.serial
        return self.serial

    cdef void _level(self, stream_t *st, int sslot, const uint8_t *pkt, const parsed_t *pp, int level_id) noexcept nogil:
        """RFC 6464: remember (now, level) of the element level_id (exactly one byte)."""
        cdef const element_t *els = pp.els
        cdef int i
        for i in range(pp.n):
            if els[i].ext_id == level_id:
                if els[i].length != 1:
                    self.stc[<size_t>sslot * ST_COUNT + ST_BAD_LEVEL] += 1
                    return
                st.level_t[st.level_count % LEVELS] = self.now
                st.level_v[st.level_count % LEVELS] = pkt[els[i].value_at] & 0x7F
                st.level_count += 1
                return

    cdef int _media(self, int sslot, const uint8_t *pkt, size_t length, int recovered, int *started) noexcept nogil:
        """One decrypted RTP packet of a known stream: account, keep, forward to every route.

        Returns 1 when the packet must go up to Python instead (RTX), 0 otherwise.
        ``recovered``: an original the router unwrapped from RTX (no statistics,
        kept if missing). Routes that just started on a video source are
        written to ``started`` (-1 terminated, at most 8) for the caller.
        """
        cdef stream_t *st = &self.streams[sslot]
        cdef source_t *src = &self.sources[st.source]
        cdef parsed_t parsed
        cdef int pt, i, nstarted = 0, switch, forwarded, keyframe = -1
        cdef uint16_t seq
        cdef uint64_t ref
        cdef route_t *r
        cdef uint64_t *stc = self.stc + <size_t>sslot * ST_COUNT
        started[0] = -1
        if rtp_parse(pkt, length, &parsed) != 0:  # parsed once: levels and every route's rewrite use it
            stc[ST_MALFORMED] += 1
            return 0
        pt = pkt[1] & 0x7F
        seq = load16(pkt + 2)
        if not recovered:
            stc[ST_PACKETS] += 1
            stc[ST_BYTES] += length
            if src.rtx_pt[pt]:
                stc[ST_RTX_UP] += 1
                return 1
            if not src.media_pt[pt] or 64 <= pt <= 95:
                stc[ST_UNKNOWN_PT] += 1
                return 0
            src.media_ssrc = st.ssrc
            self._update_stats(sslot, src.clock_rate, seq, load32(pkt + 4))
            if src.nack:
                ref = self._store(st, pkt, length, seq)
            else:
                self.serial += 1
                ref = self.serial
            if src.level_id:
                self._level(st, sslot, pkt, &parsed, src.level_id)
        else:
            ref = self._store(st, pkt, length, seq)
        for i in range(src.nroutes):
            r = &self.routes[src.routes[i]]
            switch = 0
            if r.layered and sslot != r.current:
                # simulcast (LayeredDatapath.route_select): another layer, or the one switched to
                if sslot != r.pending or recovered:
                    self.rc[<size_t>src.routes[i] * RC_COUNT
                            + (RC_OTHER_LAYER if r.current >= 0 or r.pending >= 0 else RC_LAYER_PAUSED)] += 1
                    continue
                if keyframe < 0:
                    keyframe = vp8_keyframe_start(pkt + parsed.lay.header_length,
                                                  length - parsed.lay.header_length - parsed.lay.padding)
                if not keyframe:
                    self.rc[<size_t>src.routes[i] * RC_COUNT + RC_OTHER_LAYER] += 1
                    continue
                switch = 1
            forwarded = self._forward(r, src.routes[i], pkt, length, &parsed, pt, seq, st.ssrc, ref, src.nack, 0,
                                      switch)
            if switch and r.active_ssrc == <int64_t>st.ssrc:
                r.current = sslot
                r.pending = -1
                self.rc[<size_t>src.routes[i] * RC_COUNT + RC_LAYER_SWITCHES] += 1
            if forwarded == 0:
                if not r.started:
                    r.started = 1
                    if src.video and nstarted < 8:
                        started[nstarted] = src.routes[i]
                        nstarted += 1
                        started[nstarted] = -1
        return 0

    cdef int _only_dropped_feedback(self, const uint8_t *p, size_t length) noexcept nogil:
        """1 if the compound holds only transport-cc (RTPFB 15) and REMB/AFB (PSFB 15) packets."""
        cdef size_t pos = 0, plen
        cdef int pt, fmt
        if length < 4:
            return 0
        while pos + 4 <= length:
            if (p[pos] >> 6) != 2:
                return 0
            pt = p[pos + 1]
            fmt = p[pos] & 0x1F
            plen = (<size_t>load16(p + pos + 2) + 1) * 4
            if pos + plen > length:
                return 0
            if not ((pt == 205 or pt == 206) and fmt == 15):
                return 0
            pos += plen
        return pos == length

    cdef int _run(self, int max_batches) noexcept nogil:
        cdef int b, i, n, total = 0, slot, sslot, status, k
        cdef uint8_t *pkt
        cdef size_t length, out_len
        cdef addr_key_t key
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        cdef uint8_t first
        cdef session_t *s
        cdef uint64_t *c
        cdef int started[9]
        for b in range(max_batches):
            for i in range(BATCH):
                memset(&self.rx_msgs[i].msg_hdr, 0, sizeof(msghdr))
                self.rx_msgs[i].msg_hdr.msg_name = &self.rx_addr[i]
                self.rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
                self.rx_msgs[i].msg_hdr.msg_iovlen = 1
                self.rx_msgs[i].msg_hdr.msg_control = self.rx_ctrl[i]
                self.rx_msgs[i].msg_hdr.msg_controllen = CTRL
            n = recvmmsg(self.fd, self.rx_msgs, BATCH, MSG_DONTWAIT, NULL)
            if n <= 0:
                if n < 0 and errno != EAGAIN and errno != EINTR:
                    self._engine_error(errno)
                break
            total += n
            for i in range(n):
                pkt = self.rx_buf + i * SLOT
                length = self.rx_msgs[i].msg_len
                self.rx_ns = self._stamp(&self.rx_msgs[i].msg_hdr)
                if self.rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    self._totals[2] += 1  # oversize
                    continue
                memset(&key, 0, sizeof(addr_key_t))
                if self.rx_addr[i].ss_family == AF_INET:
                    v4 = <sockaddr_in *>&self.rx_addr[i]
                    key.family = AF_INET
                    key.port = v4.sin_port
                    memcpy(key.ip, &v4.sin_addr.s_addr, 4)
                elif self.rx_addr[i].ss_family == AF_INET6:
                    v6 = <sockaddr_in6 *>&self.rx_addr[i]
                    key.family = AF_INET6
                    key.port = v6.sin6_port
                    memcpy(key.ip, v6.sin6_addr.s6_addr, 16)
                else:
                    continue
                if length < 2:
                    self._up(K_RAW, -1, &key, pkt, length)
                    continue
                first = pkt[0]
                if first < 128 or first > 191:
                    # STUN, DTLS and everything unclassified: the Python mux decides
                    self._up(K_RAW, -1, &key, pkt, length)
                    continue
                slot = self._find_session(&key)
                if slot < 0 or self.sessions[slot].rx == NULL:
                    self._up(K_RAW, slot, &key, pkt, length)
                    continue
                s = &self.sessions[slot]
                c = self.sc + <size_t>slot * SC_COUNT
                if 64 <= (pkt[1] & 0x7F) <= 95:
                    status = srtp_unprotect_rtcp(s.rx, pkt, length, SLOT, &out_len)
                    if status != SRTP_OK:
                        self._srtp_error(c, status)
                        continue
                    c[SC_RTCP_IN] += 1
                    c[SC_BYTES_IN] += length
                    if not s.feedback_up and self._only_dropped_feedback(pkt, out_len):
                        c[SC_FEEDBACK_DROPPED] += 1
                        continue
                    c[SC_UP] += 1
                    self._up(K_RTCP, slot, &key, pkt, out_len)
                    continue
                status = srtp_unprotect_rtp(s.rx, pkt, length, SLOT, &out_len)
                if status != SRTP_OK:
                    self._srtp_error(c, status)
                    continue
                c[SC_RTP_IN] += 1
                c[SC_BYTES_IN] += length
                if s.twcc_in and s.arrivals != NULL:
                    self._twcc_arrival(s, c, pkt, out_len, length)
                sslot = self._find_stream(slot, load32(pkt + 8)) if out_len >= 12 else -1
                if sslot < 0:
                    c[SC_UNKNOWN_STREAM] += 1
                    c[SC_UP] += 1
                    self._up(K_RTP, slot, &key, pkt, out_len)
                    continue
                if self._media(sslot, pkt, out_len, 0, started):
                    c[SC_UP] += 1
                    self._up(K_RTP, slot, &key, pkt, out_len)
                k = 0
                while started[k] >= 0:
                    self._up(K_STARTED, started[k], NULL, NULL, 0)
                    k += 1
                if self.nout >= OUT_FLUSH:
                    # send as we go: the first copies of a batch do not wait for its last
                    self._send_all()
            self._send_all()
            if n < BATCH:
                break
        self._send_all()
        return total

    cdef inline void _twcc_arrival(self, session_t *s, uint64_t *c, const uint8_t *pkt, size_t n,
                                   size_t wire) noexcept nogil:
        """Log an authenticated packet's transport-wide sequence number and its receive time."""
        cdef size_t at
        if element_find(pkt, n, s.twcc_in, &at) != 0:
            return
        twcc_log(s.arrivals, load16(pkt + at), self.rx_ns if self.rx_ns > 0 else realtime_ns(), wire,
                 c + SC_TWCC_OVERFLOW)

    cdef inline int64_t _stamp(self, msghdr *m) noexcept nogil:
        """The kernel's SO_TIMESTAMPNS receive time in ns (0 when there is none)."""
        cdef cmsghdr *c
        cdef timespec ts
        c = CMSG_FIRSTHDR(m)
        while c != NULL:
            if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
                return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
            c = CMSG_NXTHDR(m, c)
        return 0

    cdef inline void _srtp_error(self, uint64_t *c, int status) noexcept nogil:
        if status == SRTP_ERR_AUTH:
            c[SC_AUTH] += 1
        elif status == SRTP_ERR_REPLAY or status == SRTP_ERR_REPLAY_OLD:
            c[SC_REPLAY] += 1
        elif status >= 4 and status <= 7:
            c[SC_MALFORMED] += 1
        else:
            c[SC_SRTP_OTHER] += 1

    cdef list _take_up(self):
        cdef int i
        cdef up_t *u
        out = []
        for i in range(self.nup):
            u = &self.up[i]
            out.append((u.kind, u.slot, self._addr_of(&u.key) if u.kind != K_STARTED else None,
                        PyBytes_FromStringAndSize(<char *>u.data, u.length) if u.kind != K_STARTED else None))
        self.nup = 0
        return out

    cdef object _addr_of(self, const addr_key_t *k):
        cdef int port = ((k.port & 0xFF) << 8) | (k.port >> 8)
        if k.family == AF_INET:
            return (socket.inet_ntop(socket.AF_INET, PyBytes_FromStringAndSize(<char *>k.ip, 4)), port)
        return (socket.inet_ntop(socket.AF_INET6, PyBytes_FromStringAndSize(<char *>k.ip, 16)), port)

    def poll(self, double now, int max_batches=8):
        """Serve the socket: at most ``max_batches`` recvmmsg batches, GIL released.

        Returns what goes up to Python, a list of ``(kind, slot, addr, data)``
        (see the module docstring): UP_RAW (slot = session or -1), UP_RTP and
        UP_RTCP (slot = session, data decrypted), UP_STARTED (slot = route).
        """
        cdef int total
        if self.threaded:
            raise RuntimeError("the engine serves its socket on its own thread: take() what it hands up")
        if max_batches < 1:
            max_batches = 1
        self._lock()
        try:
            self.now = now
            with nogil:
                total = self._run(max_batches)
            self._totals[0] += total
            return self._take_up()
        finally:
            self._unlock()

    # -- the engine's own thread ---------------------------------------------------------

    cdef inline void _lock(self) noexcept:
        """Take the control lock; while it waits for the engine thread, other Python threads run."""
        if pthread_mutex_trylock(&self.mutex) != 0:
            with nogil:
                pthread_mutex_lock(&self.mutex)

    cdef inline void _unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self.mutex)

    cdef void _engine_error(self, int err) noexcept nogil:
        """A socket call failed (not EAGAIN): counted, the errno kept for the shell's one log line."""
        self._totals[3] += 1
        self._totals[4] = <uint64_t>err
        if err == EBADF or err == ENOTSOCK:
            self.fatal = 1

    cdef void _serve(self) noexcept nogil:
        """The thread's loop: wait in epoll_wait, then serve the socket as poll() does, under the lock.

        Never takes the GIL. What goes up to Python goes into the ring, and one
        eventfd write per wakeup that queued anything tells the asyncio loop.
        """
        cdef epoll_event events[4]
        cdef int n, i, woke
        cdef uint64_t one = 1, errors_before
        cdef timespec ts, pause
        cdef int pushed, failed, fatal
        pause.tv_sec = 0
        pause.tv_nsec = ERROR_PAUSE_NS
        pthread_setname_np(pthread_self(), "callsgw-engine")  # what top -H and /proc show
        cgw_store_int(&self.tid, gettid())
        while not cgw_load_int(&self.stop_flag):
            n = epoll_wait(self.epfd, events, 4, -1)
            if n < 0:
                if errno == EINTR:
                    continue
                pthread_mutex_lock(&self.mutex)
                self._engine_error(errno)
                self.fatal = 1
                pthread_mutex_unlock(&self.mutex)
                break
            if cgw_load_int(&self.stop_flag):
                break
            woke = 0
            for i in range(n):
                if events[i].data.fd == self.fd:
                    woke = 1
            if not woke:
                continue
            pthread_mutex_lock(&self.mutex)
            if isnan(self.fixed_now):
                clock_gettime(CLOCK_MONOTONIC, &ts)  # the asyncio loop's clock (time.monotonic)
                self.now = <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
            else:
                self.now = self.fixed_now
            errors_before = self._totals[3]
            self.pushed = 0
            self._totals[0] += self._run(self.max_batches)
            self._totals[5] += 1
            pushed = self.pushed
            failed = self._totals[3] != errors_before
            fatal = self.fatal
            pthread_mutex_unlock(&self.mutex)
            if pushed:
                write(self._up_fd, &one, sizeof(one))
            if fatal:
                break
            if failed:
                nanosleep(&pause, NULL)
        cgw_store_int(&self.thread_running, 0)
        write(self._up_fd, &one, sizeof(one))  # the shell notices the end at once

    def start(self, int max_batches=8):
        """Serve the socket from a native thread of the engine's own, from now until :meth:`stop`.

        The thread blocks in ``epoll_wait`` on the socket, and on each wakeup
        runs what :meth:`poll` runs (at most ``max_batches`` recvmmsg batches)
        without the GIL, under the control lock. What Python must see goes into
        a ring of RING items read with :meth:`take`; :attr:`up_fd` becomes
        readable when there is something to take.
        """
        cdef epoll_event ev
        cdef int rc
        if self.threaded:
            raise RuntimeError("the engine thread was started already")
        self.max_batches = max(1, max_batches)
        self.ring = <up_t *>malloc(RING * sizeof(up_t))
        self._up_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.ring == NULL:
            raise MemoryError()
        if self._up_fd < 0 or self.wake_fd < 0 or self.epfd < 0:
            raise OSError(errno, "engine thread: eventfd/epoll failed")
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.fd = self.fd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.fd, &ev) != 0:
            raise OSError(errno, "engine thread: cannot watch the socket")
        ev.data.fd = self.wake_fd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wake_fd, &ev) != 0:
            raise OSError(errno, "engine thread: cannot watch its wake-up eventfd")
        self.ring_head = 0
        self.ring_tail = 0
        self.stop_flag = 0
        self.fatal = 0
        self.thread_running = 1
        self.threaded = 1
        rc = pthread_create(&self.thread, NULL, _engine_main, <void *>self)
        if rc != 0:
            self.threaded = 0
            self.thread_running = 0
            raise OSError(rc, "engine thread: pthread_create failed")
        cdef timespec tick
        tick.tv_sec = 0
        tick.tv_nsec = 100000
        with nogil:  # return once the thread runs (thread_id is known), never more than about 5 s later
            for rc in range(50000):
                if cgw_load_int(&self.tid) != 0:
                    break
                nanosleep(&tick, NULL)

    cdef void _stop_thread(self) noexcept:
        cdef uint64_t one = 1
        if not self.threaded or self.joined:
            return
        cgw_store_int(&self.stop_flag, 1)
        write(self.wake_fd, &one, sizeof(one))
        with nogil:
            pthread_join(self.thread, NULL)
        self.joined = 1

    def set_clock(self, now):
        """The time the engine thread uses from now on (seconds; None: CLOCK_MONOTONIC, the default).

        For harnesses that drive the router with a simulated clock (``now``
        passed in, as every sans-I/O core here); a gateway never sets it.
        """
        cdef double value = NAN if now is None else <double>float(now)
        self._lock()
        self.fixed_now = value
        self._unlock()

    def stop(self):
        """Stop the engine thread and join it (idempotent). The tables stay; nothing serves the socket."""
        self._stop_thread()

    @property
    def running(self):
        """True while the engine thread serves the socket."""
        return bool(self.threaded and not self.joined and cgw_load_int(&self.thread_running))

    @property
    def thread_id(self):
        """The engine thread's kernel thread id (``/proc/self/task/<id>``); 0 before it ran."""
        return cgw_load_int(&self.tid)

    @property
    def up_fd(self):
        """The eventfd that is readable when :meth:`take` has items (threaded mode; -1 before start)."""
        return self._up_fd

    @property
    def up_pending(self):
        """Items in the ring not taken yet."""
        if not self.threaded:
            return 0
        return cgw_load_acquire(&self.ring_head) - self.ring_tail

    def take(self, int max_items=1024):
        """What the engine thread handed up, oldest first, as :meth:`poll` returns it.

        Reads (and so resets) :attr:`up_fd` first, then at most ``max_items``
        items; call again while :attr:`up_pending`. An RTP or RTCP item of a
        session slot that Python closed after the engine queued it is dropped
        (``up_stale``), and a raw datagram's slot becomes -1: a slot's next owner
        never receives the previous owner's packets. A route start of a closed
        route is dropped the same way.
        """
        cdef uint64_t value
        cdef unsigned long long head, tail, k
        cdef up_t *u
        cdef int slot, stale
        if not self.threaded:
            return []
        read(self._up_fd, &value, sizeof(value))  # EAGAIN when nothing was signalled: fine
        head = cgw_load_acquire(&self.ring_head)
        tail = self.ring_tail
        if head - tail > <unsigned long long>max(1, max_items):
            head = tail + <unsigned long long>max(1, max_items)
        out = []
        k = tail
        while k < head:
            u = &self.ring[k % RING]
            k += 1
            slot = u.slot
            if u.kind == K_STARTED:
                stale = not self.routes[slot].used or self.routes[slot].gen != u.gen
            elif slot >= 0:
                stale = not self.sessions[slot].used or self.sessions[slot].gen != u.gen
            else:
                stale = 0
            if stale:
                if u.kind == K_RAW:
                    slot = -1
                else:
                    self._totals[6] += 1
                    continue
            if u.kind == K_STARTED:
                out.append((K_STARTED, slot, None, None))
            else:
                out.append((u.kind, slot, self._addr_of(&u.key), PyBytes_FromStringAndSize(<char *>u.data, u.length)))
        cgw_store_release(&self.ring_tail, head)
        return out

    def srtp(self, int op, Session session, data):
        """One SRTP operation with a session's context under the control lock.

        The media shell sends every Python use of an SRTP context the engine
        holds through here (the router's RTCP, SRTP Python decrypts itself), so
        that the engine thread and Python never run one context at once.
        ``op``: 0 protect, 1 unprotect, 2 protect_rtcp, 3 unprotect_rtcp.
        Returns the new packet, or raises the status's SrtpError.
        """
        cdef const uint8_t[::1] view = data
        cdef size_t n = view.shape[0], out_len = 0, capacity
        cdef uint8_t *work
        cdef int status
        cdef srtp_ctx_t *ctx
        if op < 0 or op > 3:
            raise ValueError("bad SRTP operation")
        if not session.ready:
            raise ValueError("session is not keyed")
        if n > SRTP_MAX_PACKET:
            raise error_for_status(SRTP_ERR_TOO_LONG, _SRTP_OPS[op])
        capacity = n + 64
        work = <uint8_t *>malloc(capacity)
        if work == NULL:
            raise MemoryError()
        try:
            if n:
                memcpy(work, &view[0], n)
            ctx = session.ctx
            self._lock()
            if op == 0:
                status = srtp_protect_rtp(ctx, work, n, capacity, &out_len)
            elif op == 1:
                status = srtp_unprotect_rtp(ctx, work, n, capacity, &out_len)
            elif op == 2:
                status = srtp_protect_rtcp(ctx, work, n, capacity, &out_len)
            else:
                status = srtp_unprotect_rtcp(ctx, work, n, capacity, &out_len)
            self._unlock()
            if status != SRTP_OK:
                raise error_for_status(status, _SRTP_OPS[op])
            return PyBytes_FromStringAndSize(<char *>work, out_len)
        finally:
            free(work)

    # -- control-plane calls (the router's slow path); sends are queued, flush() sends them --

    def forward(self, int stream, packet, double now, bint recovered=False):
        """Forward a decrypted RTP packet of an installed stream as the fast path does.

        For the router's first packet of a stream it just identified, and for
        originals recovered from RTX (``recovered``: no statistics; kept in
        the history). Returns the route slots that started on a video source
        (keyframe requests), or None when the packet is RTX (the caller's job).
        """
        cdef const uint8_t[::1] view = packet
        cdef int started[9]
        cdef int k = 0
        cdef int result
        self._lock()
        try:
            if stream < 0 or stream >= self.max_streams or not self.streams[stream].used:
                raise ValueError(f"no stream in slot {stream}")
            if view.shape[0] > SLOT or view.shape[0] < 12:
                return []
            memcpy(self.rx_buf, &view[0], view.shape[0])  # never used by a poll in progress: same thread
            self.now = now
            self.rx_ns = 0  # the slow path's copies are not timed
            result = self._media(stream, self.rx_buf, view.shape[0], recovered, started)
            if result:
                return None
            out = []
            while started[k] >= 0:
                out.append(started[k])
                k += 1
            return out
        finally:
            self._unlock()

    def nack(self, int route, sequences, double now):
        """Answer a generic NACK (RFC 4585 section 6.2.1) on a route from the stream history.

        ``sequences``: the subscriber's (rewritten) sequence numbers, at most
        MAX_NACK looked at. Returns the publisher's sequence numbers the
        gateway never got (the router forwards them to the publisher: Router._nack).
        """
        cdef route_t *r = self._route(route)
        cdef uint64_t *c = self.rc + <size_t>route * RC_COUNT
        cdef int64_t ext
        cdef uint16_t in_seq, out_seq
        cdef int sslot, i, count = 0, pt, wslot
        cdef int32_t offset
        cdef stream_t *st = NULL
        cdef source_t *src
        cdef parsed_t parsed
        self._lock()
        try:
            missing = []
            self.now = now
            self.rx_ns = 0  # retransmissions are not timed
            seqs = list(sequences)
            if len(seqs) > MAX_NACK:
                c[RC_NACK_TRUNCATED] += len(seqs) - MAX_NACK
                seqs = seqs[:MAX_NACK]
            if r.source < 0 or r.active_ssrc < 0 or r.highest < 0 or r.segment_start < 0 or r.sent_ext == NULL:
                c[RC_NACK_MISSES] += len(seqs)
                return missing
            src = &self.sources[r.source]
            sslot = self._find_stream(src.session, <uint32_t>r.active_ssrc) if src.session >= 0 else -1
            if sslot >= 0 and self.streams[sslot].source == r.source:
                st = &self.streams[sslot]
            for value in seqs:
                out_seq = <uint16_t>(int(value) & 0xFFFF)
                ext = extend(r.highest, out_seq)
                if ext > r.highest or ext < r.segment_start or ext <= r.highest - r.window:
                    c[RC_NACK_RANGE] += 1
                    continue
                wslot = <int>(ext % r.window)
                if r.sent_ext[wslot] == ext:  # sent: under the offset of its time (padding may have come since)
                    offset = r.sent_off[wslot]
                    if offset < 0:  # padding: never resent
                        c[RC_NACK_RANGE] += 1
                        continue
                elif r.pad_end >= 0 and ext < r.pad_end:  # never sent, before padding: its offset is unknown
                    c[RC_NACK_RANGE] += 1
                    continue
                else:
                    offset = <int32_t>(r.offset & 0xFFFF)
                in_seq = <uint16_t>((out_seq - <uint32_t>offset) & 0xFFFF)
                if st == NULL or st.hist_seq == NULL or st.hist_seq[in_seq % HISTORY] != in_seq:
                    c[RC_NACK_MISSES] += 1
                    missing.append(in_seq)
                    continue
                if not self._take_token(r, now):
                    c[RC_RATE_LIMITED] += 1
                    continue
                i = in_seq % HISTORY
                pt = st.hist_buf[i][1] & 0x7F
                if rtp_parse(st.hist_buf[i], st.hist_len[i], &parsed) != 0:
                    continue
                self._forward(r, route, st.hist_buf[i], st.hist_len[i], &parsed, pt, in_seq, st.ssrc,
                              st.hist_ref[i], src.nack, 1, 0, offset)
            return missing
        finally:
            self._unlock()

    cdef int _take_token(self, route_t *r, double now) noexcept:
        if not isnan(r.token_stamp):
            r.tokens = min(RETRANSMIT_RATE, r.tokens + (now - r.token_stamp) * RETRANSMIT_RATE)
        r.token_stamp = now
        if r.tokens >= 1.0:
            r.tokens -= 1.0
            return 1
        return 0

    def flush(self):
        """Send what the control-plane calls queued."""
        self._lock()
        try:
            with nogil:
                self._send_all()
        finally:
            self._unlock()

    def usage(self):
        """Slots in use per table: {"sessions", "sources", "streams", "routes"} (a leak shows here)."""
        cdef int i
        cdef int counts[4]
        self._lock()
        try:
            memset(counts, 0, sizeof(counts))
            for i in range(self.session_hwm):
                counts[0] += self.sessions[i].used
            for i in range(self.source_hwm):
                counts[1] += self.sources[i].used
            for i in range(self.stream_hwm):
                counts[2] += self.streams[i].used
            for i in range(self.route_hwm):
                counts[3] += self.routes[i].used
            return {"sessions": counts[0], "sources": counts[1], "streams": counts[2], "routes": counts[3]}
        finally:
            self._unlock()

    @property
    def totals(self):
        """Engine-wide counters: datagrams received, up-queue overflows, oversize drops, socket
        errors (with the last errno), the thread's wakeups, and items dropped as stale (see take)."""
        return {"datagrams": self._totals[0], "up_overflow": self._totals[1], "oversize": self._totals[2],
                "errors": self._totals[3], "last_errno": self._totals[4], "wakeups": self._totals[5],
                "up_stale": self._totals[6]}
