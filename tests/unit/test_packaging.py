"""Packaging: the extension is built, and a missing build says how to fix it."""

import subprocess
import sys
import textwrap

import callsgw.srtp


def test_extension_is_built_against_openssl3():
    assert callsgw.srtp.Session.__module__ == "callsgw._native.srtp"
    assert callsgw.srtp.OPENSSL_VERSION_TEXT.startswith("OpenSSL 3")


def test_missing_extension_names_the_fix():
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "callsgw._native.srtp":
                    raise ModuleNotFoundError("No module named 'callsgw._native.srtp'", name=name)
        sys.meta_path.insert(0, Block())
        try:
            import callsgw.srtp
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install" in out and "libssl-dev" in out and "native/srtp.pyx" in out
