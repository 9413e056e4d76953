"""pcap / pcapng reading (loadtest.capture): a capture file is input from outside too.

Documented: ``CaptureReader`` and ``read_udp`` raise ``CaptureError`` (and its subclasses) for
anything that is not a readable capture; a partial read is recorded in ``problem`` unless
``strict``. Every datagram read must carry a payload inside the input.
"""

from __future__ import annotations

from loadtest import capture
from loadtest.capture import CaptureError


def TestOneInput(data: bytes) -> None:
    for strict in (False, True):
        try:
            reader = capture.CaptureReader(data, strict=strict)
            count = 0
            for dgram in reader:
                assert isinstance(dgram.payload, bytes)
                count += 1
                if count > 100_000:
                    break
        except CaptureError:
            continue
        if strict:
            assert reader.problem is None
