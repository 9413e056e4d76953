"""Test helpers for callsgw._native.udpio: a matched pair of SRTP sessions and two loopback UDP sockets."""

from __future__ import annotations

import os
import socket

import pytest

from callsgw.srtp import Profile, Session


def session_pair(profile=Profile.AES128_CM_HMAC_SHA1_80):
    """Two Sessions with one random key and salt: one to protect, one to unprotect."""
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    return Session(profile, key, salt), Session(profile, key, salt)


@pytest.fixture
def sockets():
    """Two non-blocking UDP sockets bound to 127.0.0.1 with 4 MiB receive buffers."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    yield a, b
    a.close()
    b.close()
