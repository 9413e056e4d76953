"""The UDP mux: every participant's media on one port (sans-I/O).

Each datagram is classified once by its first byte (RFC 7983 section 7) and
routed to a participant's :class:`MediaTransport`:

* STUN by the local part of its USERNAME (our ICE ufrag), since a check may
  come from an address we have never seen (RFC 8445 section 7.3); during an
  ICE restart a transport answers to two ufrags, the new and the previous
  (:meth:`UdpMux.refresh`), and the previous one is let go as soon as the
  transport's agent completes the restart;
* everything else by remote address, and only once that address has passed
  an ICE check for that transport.

Everything else is dropped and counted in ``drops`` by reason.
:meth:`UdpMux.drop_counts` adds the drops of the transports (their ICE-lite
agents' refused checks, their own gates, their SRTP failures), kept past a
transport's removal, under the labels of ``callsgw_media_drops_total``
(:data:`callsgw.server.views.MEDIA_DROP_REASONS`).
"""

from __future__ import annotations

from collections import Counter

from callsgw.transport.media import MediaTransport, TransportState
from callsgw.wire import stun
from callsgw.wire.demux import PacketKind, classify

Address = tuple[str, int]
MAX_DATAGRAM = 2048  # bigger than any RTP/DTLS datagram the gateway accepts

_ICE_NOT_DROPS = ("answered", "role_conflict")  # IceLiteAgent.stats keys that are answers
_SRTP_STATUS = {  # TransportCounters.srtp_errors keys (Status names, the engine's fold) -> label
    "auth": "srtp_auth",
    "replay": "srtp_replay",
    "replay_old": "srtp_replay",
    "malformed": "srtp_malformed",
    "too_short": "srtp_malformed",
    "bad_version": "srtp_malformed",
    "bad_header": "srtp_malformed",
    "too_long": "srtp_malformed",
    "bounds": "srtp_malformed",
    "unencrypted": "srtp_unencrypted",
}


def transport_drops(transport: MediaTransport) -> Counter:
    """One transport's drops by label: its ICE agent's (``ice_*``), its own, its SRTP failures (``srtp_*``)."""
    out: Counter = Counter()
    for key, n in transport.ice.stats.items():
        if n and key not in _ICE_NOT_DROPS:
            out[f"ice_{key}"] += n
    for key, n in transport.counters.drops.items():
        if n:
            out[key] += n
    for key, n in transport.counters.srtp_errors.items():
        if n:
            label = "srtp_protect_failed" if key.startswith("send_") else _SRTP_STATUS.get(key, "srtp_other")
            out[label] += n
    return out


class UdpMux:
    """Routes datagrams on the shared media port to per-participant transports."""

    def __init__(self, *, max_transports: int = 10_000):
        self.max_transports = max_transports
        self._by_ufrag: dict[str, MediaTransport] = {}
        self._ufrags: dict[MediaTransport, tuple[str, ...]] = {}  # every transport -> its registered ufrags
        self._by_addr: dict[Address, MediaTransport] = {}
        self.drops: Counter = Counter()
        self.received: Counter = Counter()
        self.retired_drops: Counter = Counter()  # transport_drops() of removed transports

    # -- registry ----------------------------------------------------------

    def add(self, transport: MediaTransport) -> None:
        if len(self._ufrags) >= self.max_transports:
            raise RuntimeError(f"media port serves at most {self.max_transports} transports")
        if transport in self._ufrags:
            raise ValueError("transport already on this port")
        if any(ufrag in self._by_ufrag for ufrag in transport.ice.local_ufrags):
            raise ValueError("ICE ufrag already in use on this port")
        self._ufrags[transport] = ()
        self.refresh(transport)

    def refresh(self, transport: MediaTransport) -> None:
        """Route STUN by the ufrags the transport answers to now (after an ICE restart began or completed).

        ``ValueError`` if a new ufrag is already another transport's (the
        transport keeps its previous routing).
        """
        registered = self._ufrags.get(transport)
        if registered is None:
            return
        wanted = transport.ice.local_ufrags
        if wanted == registered:
            return
        if any(self._by_ufrag.get(ufrag, transport) is not transport for ufrag in wanted):
            raise ValueError("ICE ufrag already in use on this port")
        for ufrag in registered:
            if ufrag not in wanted:
                del self._by_ufrag[ufrag]
        for ufrag in wanted:
            self._by_ufrag[ufrag] = transport
        self._ufrags[transport] = wanted

    def remove(self, transport: MediaTransport) -> None:
        registered = self._ufrags.pop(transport, None)
        if registered is None:
            return
        self.retired_drops.update(transport_drops(transport))
        for ufrag in registered:
            self._by_ufrag.pop(ufrag, None)
        for addr in [a for a, t in self._by_addr.items() if t is transport]:
            del self._by_addr[addr]

    def transports(self) -> list[MediaTransport]:
        return list(self._ufrags)

    def transport_for(self, addr: Address) -> MediaTransport | None:
        return self._by_addr.get(addr)

    def drop_counts(self) -> Counter:
        """Every drop on this port so far, by label: the mux's, the removed and the live transports'."""
        out = Counter(self.drops)
        out.update(self.retired_drops)
        for transport in self._ufrags:
            out.update(transport_drops(transport))
        return out

    # -- input -------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> MediaTransport | None:
        """Route one datagram; returns the transport that took it, if any."""
        if len(data) > MAX_DATAGRAM:
            self.drops["oversize"] += 1
            return None
        kind = classify(data)
        self.received[kind.name.lower()] += 1
        if kind is PacketKind.STUN:
            return self._receive_stun(data, addr, now)
        if kind is PacketKind.UNKNOWN:
            self.drops["unclassified"] += 1
            return None
        transport = self._by_addr.get(addr)
        if transport is None:
            self.drops[f"{kind.name.lower()}_from_unknown_address"] += 1
            return None
        transport.receive(kind, data, addr, now)
        return transport

    def _receive_stun(self, data: bytes, addr: Address, now: float) -> MediaTransport | None:
        names = stun.ufrags(data)
        if names is None:
            self.drops["stun_without_username"] += 1
            return None
        transport = self._by_ufrag.get(names[0])
        if transport is None:
            self.drops["stun_unknown_ufrag"] += 1
            return None
        transport.receive(PacketKind.STUN, data, addr, now)
        if transport.ice.local_ufrags != self._ufrags.get(transport):
            self._settle_restart(transport)
        if transport.ice.is_validated(addr):
            previous = self._by_addr.get(addr)
            if previous is not None and previous is not transport:
                # the address moved to another participant (NAT rebinding)
                self.drops["address_reassigned"] += 1
            self._by_addr[addr] = transport
        return transport

    def _settle_restart(self, transport: MediaTransport) -> None:
        """The transport's agent completed an ICE restart: drop the old ufrag and the retired addresses."""
        self.refresh(transport)
        for addr in [a for a, t in self._by_addr.items() if t is transport and not transport.ice.is_validated(a)]:
            del self._by_addr[addr]

    # -- output and time -------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out: list[tuple[bytes, Address]] = []
        for transport in self._ufrags:
            out.extend(transport.datagrams_to_send())
        return out

    def get_timer(self) -> float | None:
        timers = [t for t in (tr.get_timer() for tr in self._ufrags) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for transport in list(self._ufrags):
            timer = transport.get_timer()
            if timer is not None and timer <= now:
                transport.handle_timer(now)
        self._forget_stale_addresses()

    def _forget_stale_addresses(self) -> None:
        for addr, transport in list(self._by_addr.items()):
            if transport.state in (TransportState.FAILED, TransportState.CLOSED) or not transport.ice.is_validated(addr):
                del self._by_addr[addr]
