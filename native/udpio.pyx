# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Batched UDP I/O with SRTP for the forwarding benchmark's tester (callsgw._native.udpio).

Not part of the gateway. Two classes drive a client's media socket in
batches, with the GIL released for every system call and every packet:

* :class:`Sender` builds ``count`` RTP packets (12-byte header, no CSRCs or
  extensions) whose payload starts with a 16-byte stamp (send time in ns from
  ``CLOCK_REALTIME``, a step id, a 32-bit sequence; big-endian), protects each
  with the C-level SRTP call of a :class:`callsgw.srtp.Session` and sends them
  with ``sendmmsg`` (batches of :data:`BATCH`).
* :class:`Receiver` drains a socket with ``recvmmsg(MSG_DONTWAIT)``,
  classifies each datagram by its first bytes (RFC 7983: first byte 128..191
  and payload type not 64..95 is RTP), unprotects RTP from the expected
  source, reads the stamp after the CSRCs and header extension, and counts
  the packets and their latency for the current step. The receive time is the
  kernel's ``SO_TIMESTAMPNS`` (``CLOCK_REALTIME``) so the tester's own polling
  delay is not counted. Everything else (STUN, DTLS, RTCP, RTP from another
  address, unparseable data) is returned to Python as ``(bytes, (host, port))``
  for the client's own transport (ICE consent, RFC 7675).

Bounds: fixed batch and slot sizes; datagrams larger than a slot are
truncated by the kernel and dropped (counted); the latency buffer grows by
doubling up to ``max_samples`` and then only counts; at most
``max_handback`` datagrams are returned per :meth:`Receiver.poll`, the rest
counted and dropped. No input can make either class read or write outside
its buffers. A Session is marked busy while a batch runs without the GIL,
like its own batch API.

The socket work is written once: ``_BatchSender`` (slots, protect, ``sendmmsg``) under
Sender and Replayer, ``_BatchReceiver`` (``recvmmsg`` drain, receive times, classification,
unprotect, hand-back) under Receiver and Recorder, which supply only ``on_rtp``.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset, memcmp
from libc.errno cimport errno, EINTR, EAGAIN
from cpython.bytes cimport PyBytes_FromStringAndSize

from callsgw._native.srtp cimport (
    Session, srtp_ctx_t, srtp_protect_rtp, srtp_unprotect_rtp, SRTP_OK,
)

from posix.time cimport clock_gettime, CLOCK_REALTIME, timespec
from callsgw._native.net cimport (
    iovec, socklen_t, sa_family_t, sockaddr, sockaddr_storage, msghdr, mmsghdr, cmsghdr,
    CMSG_FIRSTHDR, CMSG_NXTHDR, CMSG_DATA, sendmmsg, recvmmsg, setsockopt, SOL_SOCKET,
    SO_TIMESTAMPNS, SCM_TIMESTAMPNS, MSG_DONTWAIT, MSG_TRUNC, AF_INET, AF_INET6,
    in_addr, sockaddr_in, in6_addr, sockaddr_in6, CMSG_SPACE,
    htons, ntohs, inet_pton, inet_ntop,
)


DEF _BATCH = 64
DEF _SLOT = 2048           # bytes per packet slot (RTP <= 1400 B payload + header + tag)
DEF _CTRL = 64             # control buffer per received datagram (one timespec cmsg)
DEF _STAMP = 16            # u64 send ns, u32 step, u32 sequence

BATCH = _BATCH
SLOT = _SLOT
STAMP_SIZE = _STAMP
MAX_PAYLOAD = 1400
MIN_PAYLOAD = _STAMP


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


def realtime_ns():
    """``CLOCK_REALTIME`` in ns: the clock of the stamps and of the kernel receive times."""
    return now_ns()


cdef inline void put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint32_t get32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint64_t get64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>get32(p) << 32) | <uint64_t>get32(p + 4)


cdef int make_sockaddr(object host, int port, sockaddr_storage *out, socklen_t *outlen) except -1:
    """Fill ``out`` from a numeric IPv4 or IPv6 address and a port."""
    cdef bytes h = host.encode("ascii") if isinstance(host, str) else bytes(host)
    cdef sockaddr_in *a4 = <sockaddr_in *>out
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>out
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, h, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        outlen[0] = sizeof(sockaddr_in)
        return 0
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET6, h, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        outlen[0] = sizeof(sockaddr_in6)
        return 0
    raise ValueError("not a numeric IP address: %r" % (host,))


cdef object addr_tuple(sockaddr_storage *sa, socklen_t salen):
    cdef char text[64]
    cdef sockaddr_in *a4 = <sockaddr_in *>sa
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>sa
    if sa.ss_family == AF_INET and salen >= sizeof(sockaddr_in):
        if inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text)) != NULL:
            return (text.decode("ascii"), ntohs(a4.sin_port))
    elif sa.ss_family == AF_INET6 and salen >= sizeof(sockaddr_in6):
        if inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text)) != NULL:
            return (text.decode("ascii"), ntohs(a6.sin6_port))
    return ("", 0)


cdef inline bint same_addr(const sockaddr_storage *a, socklen_t alen,
                           const sockaddr_storage *b, socklen_t blen) noexcept nogil:
    cdef const sockaddr_in *x4
    cdef const sockaddr_in *y4
    cdef const sockaddr_in6 *x6
    cdef const sockaddr_in6 *y6
    if a.ss_family != b.ss_family:
        return False
    if a.ss_family == AF_INET:
        if alen < sizeof(sockaddr_in) or blen < sizeof(sockaddr_in):
            return False
        x4 = <const sockaddr_in *>a
        y4 = <const sockaddr_in *>b
        return x4.sin_port == y4.sin_port and x4.sin_addr.s_addr == y4.sin_addr.s_addr
    if a.ss_family == AF_INET6:
        if alen < sizeof(sockaddr_in6) or blen < sizeof(sockaddr_in6):
            return False
        x6 = <const sockaddr_in6 *>a
        y6 = <const sockaddr_in6 *>b
        return x6.sin6_port == y6.sin6_port and memcmp(&x6.sin6_addr, &y6.sin6_addr, 16) == 0
    return False


cdef int check_pt(int pt) except -1:
    if not 0 <= pt <= 127 or 64 <= pt <= 95:
        raise ValueError("payload type must be 0..127 and not 64..95 (RFC 7983 / RFC 5761)")
    return 0


cdef srtp_ctx_t *claim(Session s) except NULL:
    """Mark ``s`` busy for a batch run without the GIL and return its context (the caller clears ``busy``)."""
    if s is None or s.ctx == NULL:
        raise ValueError("the SRTP session is not initialised")
    if s.busy:
        raise RuntimeError("the SRTP session is in use by a batch call")
    s.busy = 1
    return s.ctx


cdef int grow_array(void **data, Py_ssize_t *cap, Py_ssize_t limit, size_t item,
                    Py_ssize_t first) noexcept nogil:
    """Double ``*data`` (``*cap`` items of ``item`` bytes; ``first`` items at first) up to ``limit`` items.

    Returns -1 when it is full or memory runs out (``*data`` stays valid)."""
    cdef Py_ssize_t n = cap[0] * 2 if cap[0] else first
    cdef void *p
    if n > limit:
        n = limit
    if n <= cap[0]:
        return -1
    p = realloc(data[0], n * item)
    if p == NULL:
        return -1
    data[0] = p
    cap[0] = n
    return 0


cdef class _BatchSender:
    """The send side shared by :class:`Sender` and :class:`Replayer`.

    Owns the batch's packet slots and ``mmsghdr`` array: a subclass builds plaintext RTP in
    the slots, :meth:`protect_into` protects one and queues it, :meth:`flush` sends the queue
    with ``sendmmsg`` (both without the GIL). The socket stays the caller's; it is never closed.
    """

    cdef int fd
    cdef Session tx
    cdef sockaddr_storage addr
    cdef socklen_t addrlen
    cdef uint32_t ssrc
    cdef uint8_t pt
    cdef uint32_t seq          # 32-bit counter; the low 16 bits go into the header
    cdef uint8_t *buf
    cdef iovec iov[_BATCH]
    cdef mmsghdr msgs[_BATCH]
    cdef readonly uint64_t sent          # datagrams the kernel accepted
    cdef readonly uint64_t dropped       # datagrams sendmmsg refused (EAGAIN, ENOBUFS, ...)
    cdef readonly uint64_t protect_errors
    cdef readonly int last_errno

    def __cinit__(self):
        self.buf = <uint8_t *>calloc(_BATCH, _SLOT)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.buf)

    cdef int open(self, int fd, host, int port, Session tx, uint32_t ssrc, int pt,
                  uint32_t first_seq) except -1:
        if fd < 0:
            raise ValueError("bad file descriptor")
        check_pt(pt)
        make_sockaddr(host, port, &self.addr, &self.addrlen)
        self.fd = fd
        self.tx = tx
        self.ssrc = ssrc
        self.pt = <uint8_t>pt
        self.seq = first_seq
        return 0

    cdef Py_ssize_t protect_into(self, srtp_ctx_t *ctx, Py_ssize_t k, uint8_t *p,
                                 size_t length) noexcept nogil:
        """Protect the ``length``-byte packet in slot ``p`` and queue it as message ``k``.

        Returns the new queue length (``k`` again when protection failed, counted)."""
        cdef size_t out_len = 0
        if srtp_protect_rtp(ctx, p, length, _SLOT, &out_len) != SRTP_OK:
            self.protect_errors += 1
            return k
        self.iov[k].iov_base = p
        self.iov[k].iov_len = out_len
        memset(&self.msgs[k], 0, sizeof(mmsghdr))
        self.msgs[k].msg_hdr.msg_name = &self.addr
        self.msgs[k].msg_hdr.msg_namelen = self.addrlen
        self.msgs[k].msg_hdr.msg_iov = &self.iov[k]
        self.msgs[k].msg_hdr.msg_iovlen = 1
        return k + 1

    cdef void flush(self, Py_ssize_t k) noexcept nogil:
        """``sendmmsg`` the ``k`` queued messages; a datagram refused with EAGAIN is counted and
        skipped, any other error drops the rest of the batch (counted, ``last_errno`` kept)."""
        cdef Py_ssize_t off = 0
        cdef int r
        while off < k:
            r = sendmmsg(self.fd, &self.msgs[off], <unsigned int>(k - off), MSG_DONTWAIT)
            if r < 0:
                if errno == EINTR:
                    continue
                self.last_errno = errno
                if errno == EAGAIN:  # one datagram refused: count it, try the rest
                    self.dropped += 1
                    off += 1
                    continue
                self.dropped += k - off
                break
            self.sent += r
            off += r


cdef class Sender(_BatchSender):
    """Paced batches of stamped SRTP packets on one track of one client socket.

    ``Sender(fd, host, port, tx, ssrc, pt, ts_step, first_seq=0, first_ts=0)``.
    The sequence number and RTP timestamp continue from call to call (the
    SRTP index must never repeat under one key). The socket stays the
    caller's; it is never closed here.
    """

    cdef uint32_t ts_step
    cdef uint32_t ts

    def __init__(self, int fd, host, int port, Session tx not None, uint32_t ssrc, int pt,
                 uint32_t ts_step, uint32_t first_seq=0, uint32_t first_ts=0):
        self.open(fd, host, port, tx, ssrc, pt, first_seq)
        self.ts_step = ts_step
        self.ts = first_ts

    @property
    def next_seq(self):
        return self.seq

    def send(self, Py_ssize_t count, Py_ssize_t payload_size, uint32_t step):
        """Build, protect and send ``count`` packets of ``payload_size`` bytes; returns how many left.

        Each payload begins with the stamp (send time ns, ``step``, sequence);
        the rest of the payload is whatever the slot held (ciphertext of the
        previous batch): its content is irrelevant to a forwarder.
        """
        cdef Py_ssize_t done = 0, n, i, k
        cdef uint8_t *p
        cdef uint64_t stamp
        cdef srtp_ctx_t *ctx
        cdef uint64_t sent0 = self.sent
        if count < 0:
            raise ValueError("count must be >= 0")
        if not MIN_PAYLOAD <= payload_size <= MAX_PAYLOAD:
            raise ValueError("payload_size must be %d..%d" % (MIN_PAYLOAD, MAX_PAYLOAD))
        ctx = claim(self.tx)
        try:
            with nogil:
                while done < count:
                    n = count - done
                    if n > _BATCH:
                        n = _BATCH
                    k = 0
                    for i in range(n):
                        p = self.buf + i * _SLOT
                        p[0] = 0x80
                        p[1] = self.pt
                        put16(p + 2, self.seq & 0xFFFF)
                        put32(p + 4, self.ts)
                        put32(p + 8, self.ssrc)
                        stamp = now_ns()
                        put32(p + 12, <uint32_t>(stamp >> 32))
                        put32(p + 16, <uint32_t>stamp)
                        put32(p + 20, step)
                        put32(p + 24, self.seq)
                        self.seq += 1
                        self.ts += self.ts_step
                        k = self.protect_into(ctx, k, p, 12 + payload_size)
                    self.flush(k)
                    done += n
        finally:
            self.tx.busy = 0
        return self.sent - sent0


cdef class _BatchReceiver:
    """The receive side shared by :class:`Receiver` and :class:`Recorder`.

    Owns the socket's batch buffers (datagram slots, addresses, ``SO_TIMESTAMPNS`` control
    data, the ``mmsghdr`` array), drains the socket with ``recvmmsg(MSG_DONTWAIT)`` without the
    GIL, classifies each datagram (RFC 7983), takes its receive time, unprotects RTP from the
    expected source and passes it to :meth:`on_rtp`; :meth:`poll` returns everything else to
    Python. A subclass sets it up with :meth:`open` and supplies :meth:`on_rtp`.
    """

    cdef int fd
    cdef Session rx
    cdef sockaddr_storage remote
    cdef socklen_t remotelen
    cdef uint8_t *buf
    cdef uint8_t *ctrl
    cdef sockaddr_storage names[_BATCH]
    cdef iovec iov[_BATCH]
    cdef mmsghdr msgs[_BATCH]
    cdef uint8_t handback[_BATCH]
    cdef Py_ssize_t max_handback
    cdef readonly uint64_t rtp_total      # RTP unprotected successfully
    cdef readonly uint64_t unprotect_errors
    cdef readonly uint64_t truncated
    cdef readonly uint64_t handed_back
    cdef readonly uint64_t handback_dropped
    cdef readonly uint64_t syscalls
    cdef readonly uint64_t kernel_stamps  # datagrams timed by SO_TIMESTAMPNS (else by clock_gettime)

    def __cinit__(self):
        self.buf = <uint8_t *>calloc(_BATCH, _SLOT)
        self.ctrl = <uint8_t *>calloc(_BATCH, _CTRL)
        if self.buf == NULL or self.ctrl == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.buf)
        free(self.ctrl)

    cdef int open(self, int fd, host, int port, Session rx, Py_ssize_t limit, Py_ssize_t max_handback,
                  bint kernel_timestamps) except -1:
        """Check the arguments (``limit`` is the subclass's buffer bound) and take the socket."""
        cdef int one = 1
        if fd < 0:
            raise ValueError("bad file descriptor")
        if limit < 0 or max_handback < 0:
            raise ValueError("limits must be >= 0")
        make_sockaddr(host, port, &self.remote, &self.remotelen)
        self.fd = fd
        self.rx = rx
        self.max_handback = max_handback
        if kernel_timestamps:
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one))  # best effort
        return 0

    cdef void on_rtp(self, uint8_t *p, size_t length, uint64_t rx_ns, uint64_t batch_ns,
                     bint kernel) noexcept nogil:
        """One unprotected RTP packet (``length`` bytes at ``p``) received at ``rx_ns``.

        ``batch_ns`` is when its batch was read; ``kernel`` whether ``rx_ns`` is the kernel's."""
        pass

    cdef int drain_once(self) noexcept nogil:
        """One recvmmsg batch; RTP handled here, others marked in ``handback``. Returns the count or -1."""
        cdef int i, r, status
        cdef uint8_t *p
        cdef size_t length, out_len = 0
        cdef uint8_t b0, b1
        cdef uint64_t batch_ns, rx_ns
        cdef cmsghdr *c
        cdef timespec ts
        cdef srtp_ctx_t *ctx = self.rx.ctx
        for i in range(_BATCH):
            self.iov[i].iov_base = self.buf + i * _SLOT
            self.iov[i].iov_len = _SLOT
            self.msgs[i].msg_hdr.msg_name = &self.names[i]
            self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.msgs[i].msg_hdr.msg_control = self.ctrl + i * _CTRL
            self.msgs[i].msg_hdr.msg_controllen = _CTRL
            self.msgs[i].msg_hdr.msg_flags = 0
            self.msgs[i].msg_len = 0
        while True:
            r = recvmmsg(self.fd, self.msgs, _BATCH, MSG_DONTWAIT, NULL)
            if r >= 0 or errno != EINTR:
                break
        self.syscalls += 1
        if r <= 0:
            return -1 if r < 0 else 0
        batch_ns = now_ns()
        for i in range(r):
            self.handback[i] = 0
            p = self.buf + i * _SLOT
            length = self.msgs[i].msg_len
            if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC or length > _SLOT:
                self.truncated += 1
                continue
            b0 = p[0] if length > 0 else 0
            b1 = p[1] if length > 1 else 0
            if (length < 12 or b0 < 128 or b0 > 191 or 64 <= (b1 & 0x7F) <= 95
                    or not same_addr(&self.names[i], self.msgs[i].msg_hdr.msg_namelen,
                                     &self.remote, self.remotelen)
                    or ctx == NULL):
                self.handback[i] = 1  # STUN, DTLS, RTCP, unknown, or not from the gateway
                continue
            rx_ns = 0
            if self.msgs[i].msg_hdr.msg_controllen >= sizeof(cmsghdr):
                c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
                while c != NULL:
                    if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                        memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
                        rx_ns = <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec
                        self.kernel_stamps += 1
                        break
                    c = CMSG_NXTHDR(&self.msgs[i].msg_hdr, c)
            status = srtp_unprotect_rtp(ctx, p, length, _SLOT, &out_len)
            if status != SRTP_OK:
                self.unprotect_errors += 1
                continue
            self.rtp_total += 1
            self.on_rtp(p, out_len, rx_ns if rx_ns else batch_ns, batch_ns, rx_ns != 0)
        return r

    def poll(self, int max_rounds=64):
        """Drain the socket (at most ``max_rounds`` batches); returns the datagrams for Python.

        The list holds ``(data, (host, port))`` for every datagram that is not
        RTP from the gateway (bounded by ``max_handback`` per call).
        """
        cdef int rounds = 0, r = 0, i
        cdef list out = []
        while rounds < max_rounds:
            rounds += 1
            claim(self.rx)
            try:
                with nogil:
                    r = self.drain_once()
            finally:
                self.rx.busy = 0
            for i in range(r if r > 0 else 0):
                if self.handback[i]:
                    if len(out) >= self.max_handback:
                        self.handback_dropped += 1
                        continue
                    self.handed_back += 1
                    out.append((PyBytes_FromStringAndSize(<char *>(self.buf + i * _SLOT), self.msgs[i].msg_len),
                                addr_tuple(&self.names[i], self.msgs[i].msg_hdr.msg_namelen)))
            if r < _BATCH:
                break
        return out

    cdef dict base_stats(self):
        return {
            "rtp_total": self.rtp_total, "unprotect_errors": self.unprotect_errors,
            "truncated": self.truncated, "handed_back": self.handed_back,
            "handback_dropped": self.handback_dropped,
            "syscalls": self.syscalls, "kernel_stamps": self.kernel_stamps,
        }


cdef class Receiver(_BatchReceiver):
    """Drain one client socket in batches; count and time the stamped RTP of the current step.

    ``Receiver(fd, host, port, rx, max_samples=1 << 22, max_handback=256)``:
    RTP is unprotected with ``rx`` only when it comes from ``(host, port)``.
    """

    cdef int64_t *lat
    cdef Py_ssize_t n_lat, cap_lat, max_lat
    cdef readonly uint32_t step
    cdef readonly uint64_t count          # RTP of the current step
    cdef readonly uint64_t other_step     # RTP with a stamp of another step (late, probe)
    cdef readonly uint64_t unstamped      # RTP too short for a stamp
    cdef readonly uint64_t samples_dropped
    cdef readonly uint32_t last_pt
    cdef readonly uint64_t pt_seen_lo, pt_seen_hi  # bitmap of payload types seen (0..63, 64..127)

    def __init__(self, int fd, host, int port, Session rx not None, Py_ssize_t max_samples=1 << 22,
                 Py_ssize_t max_handback=256, bint kernel_timestamps=True):
        self.open(fd, host, port, rx, max_samples, max_handback, kernel_timestamps)
        self.max_lat = max_samples
        self.step = 0xFFFFFFFF

    def __dealloc__(self):
        free(self.lat)

    def start_step(self, uint32_t step):
        """Count the packets stamped with ``step`` from now on; clears the counts and samples."""
        self.step = step
        self.count = 0
        self.other_step = 0
        self.n_lat = 0

    def take(self):
        """``(count, latencies)``: this step's packet count and delays in ns (bytes of int64); clears both."""
        data = PyBytes_FromStringAndSize(<char *>self.lat, self.n_lat * 8) if self.n_lat else b""
        count = self.count
        self.count = 0
        self.n_lat = 0
        return count, data

    def pts_seen(self):
        """The payload types of the RTP unprotected so far."""
        return {pt for pt in range(128)
                if (self.pt_seen_lo if pt < 64 else self.pt_seen_hi) >> (pt & 63) & 1}

    cdef void on_rtp(self, uint8_t *p, size_t length, uint64_t rx_ns, uint64_t batch_ns,
                     bint kernel) noexcept nogil:
        cdef uint8_t pt = p[1] & 0x7F
        cdef Py_ssize_t off
        self.last_pt = pt
        if pt < 64:
            self.pt_seen_lo |= (<uint64_t>1) << pt
        else:
            self.pt_seen_hi |= (<uint64_t>1) << (pt - 64)
        off = payload_offset(p, length)
        if off < 0 or <size_t>off + _STAMP > length:
            self.unstamped += 1
            return
        if get32(p + off + 8) != self.step:
            self.other_step += 1
            return
        self.count += 1
        if self.n_lat >= self.cap_lat and grow_array(<void **>&self.lat, &self.cap_lat, self.max_lat,
                                                     sizeof(int64_t), 4096) < 0:
            self.samples_dropped += 1
            return
        self.lat[self.n_lat] = <int64_t>(rx_ns - get64(p + off))
        self.n_lat += 1

    def stats(self):
        d = {"count": self.count, "other_step": self.other_step, "unstamped": self.unstamped}
        d.update(self.base_stats())
        d["samples_dropped"] = self.samples_dropped
        return d


# -- capture replay and per-packet receive records (``callsgw loadtest run``) ---------------
#
# Additive to Sender/Receiver above. A :class:`TrackTemplate` holds one capture track (the
# packets, their schedule and RTP timestamps); a :class:`Replayer` sends one participant's copy
# of it on time (sequence number, timestamp and SSRC rewritten, protected and sent with
# ``sendmmsg`` without the GIL) and logs ``(key, send time)`` per packet; a :class:`Recorder`
# drains a socket with ``recvmmsg``, unprotects the RTP from the gateway and records per packet
# the header fields a receiver's statistics need (:data:`RECORD_DTYPE`). The key of a packet is
# ``RTP timestamp << 32 | payload_hash(payload)`` on both sides: the gateway keeps the timestamp
# and the payload (everything after the CSRCs and the header extension) byte-identical.

DEF _MAX_RECORDS = 1 << 22

ctypedef packed struct rtp_record_t:
    int64_t arrival_ns     # SO_TIMESTAMPNS (CLOCK_REALTIME), else clock_gettime at the batch
    uint32_t ssrc
    uint32_t ts
    uint32_t hash          # payload_hash of the payload
    uint16_t seq
    uint8_t pt
    uint8_t flags          # bit 0: marker; bit 1: arrival from the kernel

ctypedef packed struct send_record_t:
    uint64_t key
    int64_t send_ns

RECORD_DTYPE = [("arrival_ns", "<i8"), ("ssrc", "<u4"), ("ts", "<u4"), ("hash", "<u4"),
                ("seq", "<u2"), ("pt", "u1"), ("flags", "u1")]
SEND_DTYPE = [("key", "<u8"), ("send_ns", "<i8")]
RECORD_SIZE = sizeof(rtp_record_t)
SEND_RECORD_SIZE = sizeof(send_record_t)


cdef inline uint32_t hash_bytes(const uint8_t *p, size_t n) noexcept nogil:
    """A 32-bit non-cryptographic hash (64-bit multiply-xorshift over 8-byte words)."""
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>n * 0xFF51AFD7ED558CCDULL)
    cdef uint64_t w
    cdef size_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h ^= w
        h *= 0xC4CEB9FE1A85EC53ULL
        h ^= h >> 29
        i += 8
    w = 0
    while i < n:
        w = (w << 8) | p[i]
        i += 1
    h ^= w
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 32
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 29
    return <uint32_t>h


cdef inline Py_ssize_t payload_offset(const uint8_t *p, size_t length) noexcept nogil:
    """Offset of the RTP payload (after CSRCs and header extension), or -1 if the header overruns."""
    cdef size_t off = 12 + 4 * (p[0] & 0x0F)
    if off > length:
        return -1
    if p[0] & 0x10:
        if off + 4 > length:
            return -1
        off += 4 + 4 * ((<size_t>p[off + 2] << 8) | p[off + 3])
        if off > length:
            return -1
    return <Py_ssize_t>off


def payload_hash(data):
    """``(timestamp, hash)`` of one plaintext RTP packet, as the Replayer and Recorder compute them."""
    cdef const uint8_t[::1] v = data
    cdef Py_ssize_t off
    if v.shape[0] < 12:
        raise ValueError("shorter than an RTP header")
    off = payload_offset(&v[0], v.shape[0])
    if off < 0:
        raise ValueError("RTP header overruns the packet")
    return get32(&v[4]), hash_bytes(&v[0] + off, v.shape[0] - off)


cdef class TrackTemplate:
    """One capture track: plaintext packets with their schedule, shared by every Replayer.

    ``TrackTemplate(packets, offsets, ts_deltas, loop_seconds, loop_ts)``: ``packets`` are
    whole RTP packets (the header's SSRC, sequence number and timestamp are rewritten per
    participant; the first byte, marker, CSRCs, extension and payload are kept),
    ``offsets`` their send times in seconds from the first, ``ts_deltas`` their timestamps
    minus the first's; a loop adds ``loop_seconds`` and ``loop_ts``.
    """

    cdef uint8_t *data
    cdef Py_ssize_t *starts
    cdef uint32_t *lengths
    cdef double *offsets
    cdef uint32_t *ts_deltas
    cdef uint32_t *hashes
    cdef readonly Py_ssize_t count
    cdef readonly double loop_seconds
    cdef readonly uint32_t loop_ts

    def __init__(self, packets, offsets, ts_deltas, double loop_seconds, uint32_t loop_ts):
        cdef Py_ssize_t n = len(packets), i, total = 0, off, pos = 0, blen
        cdef bytes b
        cdef const uint8_t *src
        if n == 0 or len(offsets) != n or len(ts_deltas) != n:
            raise ValueError("packets, offsets and ts_deltas must be non-empty and of one length")
        if not loop_seconds > 0:
            raise ValueError("loop_seconds must be > 0")
        for p in packets:
            if not 12 <= len(p) <= _SLOT - 64:
                raise ValueError("every packet must be 12..%d bytes" % (_SLOT - 64))
            total += len(p)
        free(self.data); free(self.starts); free(self.lengths); free(self.offsets)
        free(self.ts_deltas); free(self.hashes)
        self.data = <uint8_t *>calloc(total, 1)
        self.starts = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        self.lengths = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.offsets = <double *>calloc(n, sizeof(double))
        self.ts_deltas = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.hashes = <uint32_t *>calloc(n, sizeof(uint32_t))
        if (self.data == NULL or self.starts == NULL or self.lengths == NULL or self.offsets == NULL
                or self.ts_deltas == NULL or self.hashes == NULL):
            raise MemoryError()
        for i in range(n):
            b = bytes(packets[i])
            blen = len(b)
            src = <const uint8_t *>(<char *>b)
            off = payload_offset(src, blen)
            if off < 0:
                raise ValueError("packet %d: RTP header overruns the packet" % i)
            memcpy(self.data + pos, src, blen)
            self.starts[i] = pos
            self.lengths[i] = <uint32_t>blen
            self.hashes[i] = hash_bytes(src + off, blen - off)
            self.offsets[i] = float(offsets[i])
            self.ts_deltas[i] = <uint32_t>(int(ts_deltas[i]) & 0xFFFFFFFF)
            pos += blen
        self.count = n
        self.loop_seconds = loop_seconds
        self.loop_ts = loop_ts

    def __dealloc__(self):
        free(self.data); free(self.starts); free(self.lengths); free(self.offsets)
        free(self.ts_deltas); free(self.hashes)

    def hash_at(self, Py_ssize_t i):
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.hashes[i]


cdef class Replayer(_BatchSender):
    """One participant's copy of a :class:`TrackTemplate`, sent on time from one client socket.

    ``Replayer(fd, host, port, tx, template, ssrc, pt, first_seq, ts_base, start_ns, speed=1.0,
    max_log=1 << 20)``: packet ``n`` of loop ``k`` is due at ``start_ns + (k * loop_seconds +
    offsets[n]) / speed`` (``CLOCK_REALTIME`` ns), with sequence number ``first_seq + sent so far``
    and timestamp ``ts_base + k * loop_ts + ts_deltas[n]``. The socket stays the caller's.
    """

    cdef TrackTemplate tpl
    cdef uint32_t ts_base
    cdef int64_t start_ns
    cdef double speed
    cdef Py_ssize_t n
    cdef uint64_t loops
    cdef send_record_t *log
    cdef Py_ssize_t n_log, cap_log, max_log
    cdef readonly uint64_t log_dropped

    def __init__(self, int fd, host, int port, Session tx not None, TrackTemplate template not None,
                 uint32_t ssrc, int pt, uint32_t first_seq, uint32_t ts_base, int64_t start_ns,
                 double speed=1.0, Py_ssize_t max_log=1 << 20):
        if not speed > 0:
            raise ValueError("speed must be > 0")
        if max_log < 0:
            raise ValueError("max_log must be >= 0")
        self.open(fd, host, port, tx, ssrc, pt, first_seq)
        self.tpl = template
        self.ts_base = ts_base
        self.start_ns = start_ns
        self.speed = speed
        self.max_log = max_log

    def __dealloc__(self):
        free(self.log)

    cdef inline int64_t due_ns(self) noexcept nogil:
        return self.start_ns + <int64_t>(((<double>self.loops) * self.tpl.loop_seconds
                                          + self.tpl.offsets[self.n]) / self.speed * 1e9)

    @property
    def next_due_ns(self):
        return self.due_ns()

    @property
    def next_seq(self):
        return self.seq & 0xFFFF

    cdef int grow_log(self) noexcept nogil:
        return grow_array(<void **>&self.log, &self.cap_log, self.max_log, sizeof(send_record_t), 1024)

    def send_due(self, int64_t now_ns, Py_ssize_t max_packets=4096):
        """Send every packet due at ``now_ns`` (at most ``max_packets``).

        Returns ``(sent, lag_ns)``: packets handed to the kernel and how late the earliest
        due packet was (-1 when nothing was due). Packets over ``max_packets`` stay due.
        """
        cdef TrackTemplate tpl = self.tpl
        cdef Py_ssize_t k, i, done = 0
        cdef uint8_t *p
        cdef int64_t due, lag = -1, stamp
        cdef uint32_t ts
        cdef srtp_ctx_t *ctx
        cdef uint64_t sent0 = self.sent
        if self.tx is None or self.tx.ctx == NULL:
            raise ValueError("the SRTP session is not initialised")
        due = self.due_ns()
        if due > now_ns:
            return 0, -1
        lag = now_ns - due
        ctx = claim(self.tx)
        try:
            with nogil:
                while done < max_packets:
                    k = 0
                    stamp = <int64_t>now_ns_()
                    while k < _BATCH and done < max_packets:
                        due = self.due_ns()
                        if due > now_ns:
                            break
                        p = self.buf + k * _SLOT
                        i = self.n
                        memcpy(p, tpl.data + tpl.starts[i], tpl.lengths[i])
                        ts = self.ts_base + <uint32_t>(self.loops * tpl.loop_ts) + tpl.ts_deltas[i]
                        p[1] = (p[1] & 0x80) | self.pt
                        put16(p + 2, self.seq & 0xFFFF)
                        put32(p + 4, ts)
                        put32(p + 8, self.ssrc)
                        self.seq += 1
                        self.n += 1
                        if self.n == tpl.count:
                            self.n = 0
                            self.loops += 1
                        done += 1
                        if self.n_log < self.cap_log or self.grow_log() == 0:
                            self.log[self.n_log].key = ((<uint64_t>ts) << 32) | tpl.hashes[i]
                            self.log[self.n_log].send_ns = stamp
                            self.n_log += 1
                        else:
                            self.log_dropped += 1
                        k = self.protect_into(ctx, k, p, tpl.lengths[i])
                    if k == 0:
                        break
                    self.flush(k)
                    if k < _BATCH:
                        break
        finally:
            self.tx.busy = 0
        return self.sent - sent0, lag

    def take_log(self):
        """The send log since the last call: bytes of :data:`SEND_DTYPE` records (key, send ns)."""
        data = PyBytes_FromStringAndSize(<char *>self.log, self.n_log * sizeof(send_record_t)) if self.n_log else b""
        self.n_log = 0
        return data


cdef inline uint64_t now_ns_() noexcept nogil:
    return now_ns()


cdef class Recorder(_BatchReceiver):
    """Drain one client socket in batches and record every RTP packet from the gateway.

    ``Recorder(fd, host, port, rx, max_records=1 << 22, max_handback=256, kernel_timestamps=True)``.
    Per packet unprotected with ``rx`` (only from ``(host, port)``) one :data:`RECORD_DTYPE`
    record: arrival time, SSRC, timestamp, payload hash, sequence number, payload type, flags.
    Everything else is returned by :meth:`poll` as ``(bytes, (host, port))`` like
    :meth:`Receiver.poll`. At most ``max_records`` wait for :meth:`take`; more are counted in
    ``records_dropped`` and lost to the statistics.
    """

    cdef rtp_record_t *rec
    cdef Py_ssize_t n_rec, cap_rec, max_rec
    cdef readonly uint64_t malformed
    cdef readonly uint64_t records_dropped
    cdef readonly int64_t backlog_max_ns   # largest (poll time - arrival) since take()

    def __init__(self, int fd, host, int port, Session rx not None, Py_ssize_t max_records=_MAX_RECORDS,
                 Py_ssize_t max_handback=256, bint kernel_timestamps=True):
        self.open(fd, host, port, rx, max_records, max_handback, kernel_timestamps)
        self.max_rec = max_records

    def __dealloc__(self):
        free(self.rec)

    @property
    def pending(self):
        return self.n_rec

    def take(self):
        """The records since the last call, as bytes of :data:`RECORD_DTYPE`; clears them and the backlog."""
        data = PyBytes_FromStringAndSize(<char *>self.rec, self.n_rec * sizeof(rtp_record_t)) if self.n_rec else b""
        self.n_rec = 0
        self.backlog_max_ns = 0
        return data

    cdef void on_rtp(self, uint8_t *p, size_t length, uint64_t rx_ns, uint64_t batch_ns,
                     bint kernel) noexcept nogil:
        cdef Py_ssize_t off = payload_offset(p, length)
        cdef int64_t backlog
        cdef rtp_record_t *out
        if off < 0:
            self.malformed += 1
            return
        backlog = <int64_t>batch_ns - <int64_t>rx_ns
        if backlog > self.backlog_max_ns:
            self.backlog_max_ns = backlog
        if self.n_rec >= self.cap_rec and grow_array(<void **>&self.rec, &self.cap_rec, self.max_rec,
                                                     sizeof(rtp_record_t), 1024) < 0:
            self.records_dropped += 1
            return
        out = &self.rec[self.n_rec]
        out.arrival_ns = <int64_t>rx_ns
        out.ssrc = get32(p + 8)
        out.ts = get32(p + 4)
        out.hash = hash_bytes(p + off, length - off)
        out.seq = <uint16_t>((<uint16_t>p[2] << 8) | p[3])
        out.pt = p[1] & 0x7F
        out.flags = (2 if kernel else 0) | (1 if p[1] & 0x80 else 0)
        self.n_rec += 1

    def stats(self):
        d = self.base_stats()
        d.update(malformed=self.malformed, records_dropped=self.records_dropped)
        return d
