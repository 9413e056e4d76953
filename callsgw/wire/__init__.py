"""Wire formats: parsers and serialisers, RFC-cited, ``ValueError`` subclasses on bad input.

* :mod:`callsgw.wire.demux`: RFC 7983 first-byte classification (STUN / DTLS / RTP / RTCP).
* :mod:`callsgw.wire.stun`: strict STUN (RFC 8489) over aioice's codec, for ICE-lite.
* :mod:`callsgw.wire.rtp`, :mod:`callsgw.wire.rtcp`: RTP headers and extensions, RTCP compounds.
* :mod:`callsgw.wire.sdp`: what the gateway's and the client's SDP code read alike
  (:class:`~callsgw.wire.sdp.SdpError`, ``a=setup``, BUNDLE, sha-256 fingerprints).

Submodules are imported explicitly (``from callsgw.wire import stun``), so that the
demultiplexer does not pull in aioice.
"""
