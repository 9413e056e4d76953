"""A new admin key is shown once on a terminal, else handed over in a 0600 file; never in the log stream.

``callsgw serve`` makes the admin key on first start. When stderr is a
terminal the operator sees it there, as before. When stderr is a pipe
(journald, ``docker logs``), stderr *is* the log, which those keep: the key
goes to ``admin_key.new`` (mode 0600) in the data directory and only that
path is logged. Both branches are run as real ``python -m callsgw serve``
processes, and on :class:`callsgw.datadir.DataDir` directly.
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callsgw.datadir import ADMIN_KEY_HANDOFF_FILE, DataDir

ROOT = Path(__file__).resolve().parents[2]


def _serve(data: Path, stderr) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    return subprocess.Popen(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
         "--shutdown-grace", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )


def _run_until_serving(proc: subprocess.Popen, drain=None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if drain is not None:
            drain()
        if ready:
            line = proc.stdout.readline()
            if "callsgw is serving" in line:
                break
            assert line, f"serve exited early ({proc.poll()})"
    else:
        raise AssertionError("serve did not start in 30 s")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_serve_with_a_pipe_for_stderr_writes_the_key_to_a_private_file(tmp_path):
    data = tmp_path / "data"
    proc = _serve(data, subprocess.PIPE)
    _run_until_serving(proc)
    err = proc.stderr.read()
    handoff = data / ADMIN_KEY_HANDOFF_FILE
    assert handoff.exists(), err
    assert stat.S_IMODE(os.stat(handoff).st_mode) == 0o600
    key = handoff.read_text().strip()
    assert DataDir(data).check_admin_key(key)
    assert key not in err and str(handoff) in err, err  # the path is logged, the key is not
    assert key.encode() not in (data / "admin_key.sha256").read_bytes()

    # the next start reminds the operator that the file is still there, and never shows the key
    proc = _serve(data, subprocess.PIPE)
    _run_until_serving(proc)
    err = proc.stderr.read()
    assert "still holds the admin key" in err and key not in err


def test_serve_on_a_terminal_shows_the_key_once_and_writes_no_file(tmp_path):
    data = tmp_path / "data"
    master, slave = os.openpty()
    seen = bytearray()

    def drain():
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its side
                return
            if not chunk:
                return
            seen.extend(chunk)

    try:
        proc = _serve(data, slave)
        os.close(slave)
        _run_until_serving(proc, drain)
        drain()
    finally:
        os.close(master)
    shown = seen.decode(errors="replace")
    assert "shown only now" in shown, shown
    key = shown.split("shown only now", 1)[1].splitlines()[1].strip()
    assert DataDir(data).check_admin_key(key)
    assert not (data / ADMIN_KEY_HANDOFF_FILE).exists()


def test_datadir_hands_the_key_over_by_stream(tmp_path, monkeypatch, caplog):
    # a pipe: the file, and a log line with only its path
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level(logging.DEBUG):
        datadir = DataDir(tmp_path / "pipe")
        key = datadir.admin_key()
    handoff = datadir.path / ADMIN_KEY_HANDOFF_FILE
    assert handoff.read_text() == key + "\n" and stat.S_IMODE(os.stat(handoff).st_mode) == 0o600
    assert key not in caplog.text + sys.stderr.getvalue() and str(handoff) in caplog.text
    # rotation makes the file's key useless, so the file goes
    new = datadir.rotate_admin_key()
    assert not handoff.exists() and datadir.check_admin_key(new) and not datadir.check_admin_key(key)

    # a terminal: printed once on it, no file
    master, slave = os.openpty()
    try:
        tty = os.fdopen(slave, "w")
        monkeypatch.setattr(sys, "stderr", tty)
        datadir = DataDir(tmp_path / "tty")
        key = datadir.admin_key()
        tty.flush()
        assert key in os.read(master, 65536).decode()
        assert not (datadir.path / ADMIN_KEY_HANDOFF_FILE).exists()
        tty.close()
    finally:
        os.close(master)
    # announce=False (callsgw admin-key prints it on stdout itself): neither
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    datadir = DataDir(tmp_path / "quiet")
    assert datadir.admin_key(announce=False)
    assert not (datadir.path / ADMIN_KEY_HANDOFF_FILE).exists() and sys.stderr.getvalue() == ""
