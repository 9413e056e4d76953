"""The gateway's own cost, when it runs on this host: CPU (utime + stime) and RSS from /proc (Linux).

``loadtest run --gateway-pid PID`` samples that process once a second; with the default
``--gateway-pid auto`` and a loopback URL, the process listening on the URL's TCP port is found
through ``/proc/net/tcp{,6}`` and the socket inodes in ``/proc/*/fd``. The testers count what the
gateway forwarded (every SRTP/SRTCP datagram a virtual participant received is one the gateway
sent to a subscriber), so CPU time over forwarded packets is the gateway's **µs per forwarded
packet**, the figure the engine-thread issue's targets are read from.

Nothing here needs privileges beyond reading another process's ``/proc/PID/stat`` and ``statm``
(same user, or root); finding the listener also needs its ``/proc/PID/fd`` (same user or root).

A gateway on another host is sampled through its ``/metrics`` instead
(:class:`MetricsProbe`, ``--gateway-metrics URL`` with the admin key): the gateway exports its own
``callsgw_process_cpu_seconds_total`` and ``callsgw_process_resident_memory_bytes``. A thread
scrapes once a second, so the tester's event loop never waits on HTTP.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["GatewayProbe", "MetricsProbe", "ProbeError", "gateway_summary", "listening_pid"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


class ProbeError(Exception):
    """The gateway process cannot be sampled (one line for the user)."""


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            try:
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if local_port == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def listening_pid(port: int, proc: Path = Path("/proc")) -> int | None:
    """The one process with a TCP socket listening on ``port``, or None (none, several, or not readable)."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    found.add(int(entry.name))
                    break
            except OSError:
                continue
    return found.pop() if len(found) == 1 else None


class GatewayProbe:
    """CPU seconds (user + system) and resident memory of one process, read from /proc."""

    def __init__(self, pid: int, proc: Path = Path("/proc")) -> None:
        self.pid = pid
        self._stat = proc / str(pid) / "stat"
        self._statm = proc / str(pid) / "statm"
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        if self.read() is None:
            raise ProbeError(f"gateway process {pid}: no such process, or its /proc entry is not readable")

    def read(self) -> tuple[float, int] | None:
        """``(cpu_seconds, rss_bytes)`` now, or None once the process is gone."""
        try:
            stat = self._stat.read_text()
            statm = self._statm.read_text()
        except OSError:
            return None
        # the command name (field 2) may hold spaces and parentheses: fields follow its last ')'
        rest = stat.rsplit(")", 1)[-1].split()
        if rest and rest[0] in ("Z", "X"):
            return None  # exited, not yet reaped by its parent: gone all the same
        try:
            utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
            resident_pages = int(statm.split()[1])
        except (IndexError, ValueError):
            return None
        return (utime + stime) / self._ticks, resident_pages * self._page


_CPU = re.compile(r"^callsgw_process_cpu_seconds_total (\S+)$", re.MULTILINE)
_RSS = re.compile(r"^callsgw_process_resident_memory_bytes (\S+)$", re.MULTILINE)
MAX_METRICS_BYTES = 4 << 20  # a /metrics page larger than this is refused, not read


class MetricsProbe:
    """CPU seconds and resident memory of a gateway, scraped from its ``/metrics`` (any host).

    ``read()`` answers at once from the latest scrape (a thread scrapes every ``interval``
    seconds); it is None once scrapes have failed for ``gone_after`` seconds (the gateway is gone).
    """

    def __init__(self, url: str, admin_key: str, *, insecure: bool = False, interval: float = 1.0,
                 gone_after: float = 3.0) -> None:
        if not url.startswith(("https://", "http://")):
            raise ProbeError(f"--gateway-metrics must be an http(s):// URL of the gateway's /metrics, not {url!r}")
        self.url = url
        self._key = admin_key
        self._context = None
        if url.startswith("https://") and insecure:
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE
        self.interval = interval
        self.gone_after = gone_after
        self.pid = None
        self._latest: tuple[float, int] | None = None
        self._latest_at = 0.0
        self._stop = threading.Event()
        first = self._scrape()  # the first scrape happens now, so a wrong URL or key is one line at start
        self._latest, self._latest_at = first, time.monotonic()
        self._thread = threading.Thread(target=self._run, name="loadtest-metrics-probe", daemon=True)
        self._thread.start()

    def _scrape(self) -> tuple[float, int]:
        request = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self._key}"})
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=5) as response:
                text = response.read(MAX_METRICS_BYTES + 1).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise ProbeError(f"{self.url}: HTTP {exc.code} (is the admin key right?)") from None
        except (OSError, ValueError) as exc:
            raise ProbeError(f"{self.url}: {getattr(exc, 'reason', None) or exc}") from None
        if len(text) > MAX_METRICS_BYTES:
            raise ProbeError(f"{self.url}: the page is larger than {MAX_METRICS_BYTES} bytes")
        cpu, rss = _CPU.search(text), _RSS.search(text)
        if cpu is None or rss is None:
            raise ProbeError(f"{self.url}: no callsgw_process_cpu_seconds_total / resident_memory_bytes there "
                             "(a gateway older than this loadtest, or not a callsgw /metrics)")
        return float(cpu.group(1)), int(float(rss.group(1)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._latest, self._latest_at = self._scrape(), time.monotonic()
            except ProbeError:
                pass  # read() turns None once this lasts gone_after seconds

    def read(self) -> tuple[float, int] | None:
        if time.monotonic() - self._latest_at > self.gone_after + self.interval:
            return None
        return self._latest

    def close(self) -> None:
        self._stop.set()


def gateway_summary(timeline: list[dict], pid: int | None, source: str | None = None) -> dict:
    """The gateway section of the report, from the timeline's gateway samples.

    ``us_per_forwarded_packet`` counts from the first second in which every participant that
    would connect was connected (the steady phase; joins cost DTLS handshakes), or over the
    whole run if there is no such second.
    """
    points = [p for p in timeline if p.get("gateway_cpu_s") is not None]
    if len(points) < 2:
        return {"pid": pid, "source": source or "/proc", "samples": len(points), "cpu_percent": None,
                "us_per_forwarded_packet": None, "rss_mb": None}
    most = max(p["connected"] for p in points)
    steady = [p for p in points if p["connected"] == most]
    span = steady if len(steady) >= 2 else points
    cpu = span[-1]["gateway_cpu_s"] - span[0]["gateway_cpu_s"]
    forwarded = span[-1]["received_total"] - span[0]["received_total"]
    wall = span[-1]["t"] - span[0]["t"]
    rss = [p["gateway_rss_mb"] for p in points]
    return {
        "pid": pid,
        "source": source or "/proc",
        "samples": len(points),
        "measured_from_s": span[0]["t"],
        "measured_to_s": span[-1]["t"],
        "cpu_seconds": round(cpu, 3),
        "cpu_percent": round(100 * cpu / wall, 1) if wall > 0 else None,
        "forwarded_packets": forwarded,
        "us_per_forwarded_packet": round(cpu / forwarded * 1e6, 2) if forwarded > 0 else None,
        "rss_mb": {"first": rss[0], "max": max(rss), "last": rss[-1]},
        "note": "forwarded packets = SRTP/SRTCP datagrams the virtual participants received from the gateway",
    }
