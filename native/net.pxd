# Declarations of the POSIX/Linux socket calls the native modules use (no code).
#
# cimported by engine.pyx (the forwarding engine) and udpio.pyx (the testers'
# batched I/O): recvmmsg/sendmmsg batches, SO_TIMESTAMPNS control messages,
# IPv4/IPv6 socket addresses. Linux only (recvmmsg and sendmmsg are GNU
# extensions; Python.h already defines _GNU_SOURCE).

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from posix.time cimport timespec

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    cdef struct sockaddr:
        sa_family_t sa_family
    cdef struct sockaddr_storage:
        sa_family_t ss_family
    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags, timespec *timeout)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS
    int MSG_DONTWAIT
    int MSG_TRUNC
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct in6_addr:
        uint8_t s6_addr[16]
    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t htons(uint16_t v)
    uint16_t ntohs(uint16_t v)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
