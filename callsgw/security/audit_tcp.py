"""``callsgw audit`` over the gateway's ICE-TCP candidate (RFC 6544 active side, RFC 4571 framing).

The audit's media exchange (:func:`callsgw.security.audit._media_exchange`) speaks datagrams on a
socket: ``sendto``, ``recvfrom`` and ``settimeout``. :class:`FramedSocket` offers the same three
over one TCP connection to a ``tcptype passive`` candidate, each datagram one RFC 4571 frame, so
the same ICE checks and the same DTLS probes run unchanged over ICE-TCP and are judged alike.
"""

from __future__ import annotations

import socket
import time
from collections import deque

from callsgw.transport.tcp import FrameDecoder, FramingError, frame

__all__ = ["FramedSocket", "connect_tcp_candidate"]

CONNECT_TIMEOUT = 5.0


class FramedSocket:
    """A blocking TCP connection that looks like a datagram socket to ``peer`` (see the module docstring).

    When the gateway closes the connection (as it may after refusing a handshake) or the framing
    breaks, further reads wait out their timeout and raise ``socket.timeout``, as a UDP socket
    would when nothing more comes.
    """

    def __init__(self, sock: socket.socket, peer: tuple[str, int]):
        self.sock = sock
        self.peer = peer
        self.decoder = FrameDecoder()
        self.pending: deque[bytes] = deque()
        self.closed = False
        self._timeout: float | None = None

    def sendto(self, data: bytes, addr) -> int:
        if self.closed:
            return 0
        try:
            self.sock.sendall(frame(data))
        except OSError:
            self.closed = True
            return 0
        return len(data)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self.sock.settimeout(timeout)

    def recvfrom(self, size: int):
        while not self.pending:
            if self.closed:
                if self._timeout:
                    time.sleep(self._timeout)
                raise socket.timeout("the ICE-TCP connection is closed")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                continue
            try:
                self.pending.extend(self.decoder.feed(chunk))
            except FramingError:
                self.closed = True
        return self.pending.popleft(), self.peer

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def connect_tcp_candidate(candidate: tuple[str, int]) -> FramedSocket:
    """Open the TCP connection of an ICE-TCP check to the gateway's passive candidate."""
    sock = socket.create_connection(candidate, timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return FramedSocket(sock, (candidate[0], candidate[1]))
