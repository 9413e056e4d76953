"""callsgw: a WebRTC calls media security gateway.

It enforces the Mattermost calls security contract: TLS on signaling,
DTLS 1.2 with exactly the mandated suites, and SRTP on every media packet.
See README.md and ARCHITECTURE.md.
"""

__version__ = "0.1.0"
