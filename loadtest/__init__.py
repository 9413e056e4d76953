"""``callsgw loadtest``: read RTP captures, split and analyse their streams (issue 8, items 1, 5, 7).

- :mod:`loadtest.capture` reads classic pcap and pcapng into :class:`~loadtest.capture.UdpDatagram`.
- :mod:`loadtest.streams` splits RTP streams by 5-tuple and SSRC and guesses their codec.
- :mod:`loadtest.analyze` computes tshark-compatible per-stream statistics (packets, lost, jitter).
- :mod:`loadtest.cli` is the ``callsgw loadtest`` subcommand.
"""
