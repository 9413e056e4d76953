"""Every data-directory refusal is one clear line on stderr and exit status 2, through the real CLI.

Each case prepares a working data directory (secrets, admin key hash,
default certificate), plants one unsafe thing in it (a symbolic link, a file
owned by another user, a directory where a file belongs, a file that is not
a database) and runs ``python -m callsgw serve`` as a separate process. The
gateway must refuse before it serves: exit 2, exactly one line on stderr
naming the file, no traceback, and nothing written where a link pointed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from callsgw.datadir import DataDir
from callsgw.tls import ensure_default_certificate

ROOT = Path(__file__).resolve().parents[2]
FOREIGN_UID = 12345


def _prepared(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    datadir = DataDir(data)
    datadir.api_secret()
    datadir.admin_key(announce=False)
    ensure_default_certificate(datadir)
    return data


def _link(data: Path, name: str, target: Path) -> Path:
    (data / name).symlink_to(target)
    return target


def _foreign(data: Path, name: str, tmp_path: Path) -> None:
    path = data / name
    if name.endswith(("-journal", "-wal", "-shm")):
        path.write_bytes(b"")
    elif not path.exists():
        path.write_bytes(b"")
    os.chown(path, FOREIGN_UID, FOREIGN_UID)


CASES = {
    # name -> (plant(data, tmp_path) -> a path that must stay untouched or None, words the line must hold)
    "records symlink to a file": (
        lambda d, t: _link(d, "records.sqlite3", t / "elsewhere.sqlite3"), ["records.sqlite3", "symbolic link"]),
    "records symlink dangling": (
        lambda d, t: _link(d, "records.sqlite3", t / "nowhere" / "x.sqlite3"), ["records.sqlite3", "symbolic link"]),
    "journal symlink": (
        lambda d, t: _link(d, "records.sqlite3-journal", t / "planted-journal"), ["records.sqlite3-journal", "symbolic link"]),
    "wal symlink": (
        lambda d, t: _link(d, "records.sqlite3-wal", t / "planted-wal"), ["records.sqlite3-wal", "symbolic link"]),
    "shm symlink": (
        lambda d, t: _link(d, "records.sqlite3-shm", t / "planted-shm"), ["records.sqlite3-shm", "symbolic link"]),
    "records foreign owner": (
        lambda d, t: _foreign(d, "records.sqlite3", t), ["records.sqlite3", f"uid {FOREIGN_UID}"]),
    "journal foreign owner": (
        lambda d, t: _foreign(d, "records.sqlite3-journal", t), ["records.sqlite3-journal", f"uid {FOREIGN_UID}"]),
    "wal foreign owner": (
        lambda d, t: _foreign(d, "records.sqlite3-wal", t), ["records.sqlite3-wal", f"uid {FOREIGN_UID}"]),
    "records is a directory": (
        lambda d, t: (d / "records.sqlite3").mkdir(), ["records.sqlite3", "not a regular file"]),
    "shm is a directory": (
        lambda d, t: (d / "records.sqlite3-shm").mkdir(), ["records.sqlite3-shm", "not a regular file"]),
    "records not a database": (
        lambda d, t: (d / "records.sqlite3").write_bytes(b"not a database at all" * 100),
        ["records.sqlite3", "not a usable records database"]),
    "api_secret symlink": (
        lambda d, t: (d / "api_secret").unlink() or _link(d, "api_secret", t / "secret"), ["api_secret", "symbolic link"]),
    "admin key hash symlink": (
        lambda d, t: (d / "admin_key.sha256").unlink() or _link(d, "admin_key.sha256", t / "hash"),
        ["admin_key.sha256", "symbolic link"]),
    "certificate symlink": (
        lambda d, t: (d / "tls_cert.pem").unlink() or _link(d, "tls_cert.pem", t / "cert.pem"),
        ["tls_cert.pem", "symbolic link"]),
    "data dir foreign owner": (
        lambda d, t: os.chown(d, FOREIGN_UID, FOREIGN_UID), [f"uid {FOREIGN_UID}", "data"]),
}


def _serve(data: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    return subprocess.run(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
         "--log-level", "error", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_serve_refuses_an_unsafe_data_directory_in_one_line(tmp_path, case):
    if os.geteuid() != 0 and ("foreign" in case):
        pytest.skip("making a file owned by another user needs root")
    data = _prepared(tmp_path)
    plant, words = CASES[case]
    untouched = plant(data, tmp_path)
    result = _serve(data)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("callsgw serve: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    if isinstance(untouched, Path):
        assert not untouched.exists(), f"{untouched} was written through the link"


def test_a_records_file_named_by_url_is_checked_the_same_way(tmp_path):
    data = _prepared(tmp_path)
    store = tmp_path / "elsewhere" / "gw.sqlite3"
    store.parent.mkdir()
    (store.parent / "gw.sqlite3-journal").symlink_to(tmp_path / "planted")
    result = _serve(data, "--database", f"sqlite:///{store}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "gw.sqlite3-journal" in lines[0] and "symbolic link" in lines[0]
    assert not (tmp_path / "planted").exists()
