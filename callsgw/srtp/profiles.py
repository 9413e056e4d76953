"""SRTP protection profiles that callsgw accepts.

The values are the IANA "DTLS-SRTP Protection Profiles" code points
(RFC 5764 section 4.1.2, RFC 7714 section 14.2). The Mattermost calls
contract allows exactly these two; any other profile is refused.
"""

from __future__ import annotations

import enum


class Profile(enum.IntEnum):
    """An SRTP protection profile, with the lengths it implies."""

    AES128_CM_HMAC_SHA1_80 = 0x0001
    AEAD_AES_128_GCM = 0x0007

    @property
    def aead(self) -> bool:
        """True for the AEAD (AES-GCM, RFC 7714) profile."""
        return self is Profile.AEAD_AES_128_GCM

    @property
    def key_length(self) -> int:
        """Master key length in bytes (both profiles use AES-128)."""
        return 16

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes: 112 bits for AES-CM, 96 for GCM."""
        return 12 if self.aead else 14

    @property
    def tag_length(self) -> int:
        """Authentication tag length in bytes: 80-bit HMAC or 128-bit GCM tag."""
        return 16 if self.aead else 10

    @property
    def dtls_name(self) -> str:
        """The profile's name in OpenSSL's use_srtp extension list."""
        return "SRTP_AEAD_AES_128_GCM" if self.aead else "SRTP_AES128_CM_SHA1_80"

    @classmethod
    def from_dtls_name(cls, name: str) -> "Profile":
        """Map an OpenSSL SRTP profile name (e.g. from DTLS) to a Profile."""
        for profile in cls:
            if profile.dtls_name == name:
                return profile
        raise ValueError(f"SRTP profile {name!r} is not allowed by callsgw")
