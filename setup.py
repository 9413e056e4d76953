"""Build the native extensions in native/ against the system OpenSSL.

Metadata lives in pyproject.toml; this file only declares the Cython
extension modules. The .pxd files in native/ are staged under
build/cython-include/callsgw/_native/ so that native modules cimport each
other by their real package names (e.g. ``from callsgw._native.srtp cimport
Session``); Cython then imports them at run time under those same names.
"""

import os
import shutil
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "native"
STAGE = HERE / "build" / "cython-include"
MODULES = ("srtp", "engine", "udpio")


def stage_pxd() -> None:
    pkg = STAGE / "callsgw" / "_native"
    pkg.mkdir(parents=True, exist_ok=True)
    for marker in (STAGE / "callsgw" / "__init__.pxd", pkg / "__init__.pxd"):
        marker.touch()
    for pxd in NATIVE.glob("*.pxd"):
        shutil.copy2(pxd, pkg / pxd.name)


def extensions():
    stage_pxd()
    common = dict(
        libraries=["crypto"],
        extra_compile_args=["-O3", "-Wno-unused-function"],
        define_macros=[("OPENSSL_API_COMPAT", "30000"), ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    # srtp: the SRTP core; engine: the forwarding engine (cimports srtp);
    # udpio: batched UDP I/O for the benchmark's tester
    exts = [
        Extension(f"callsgw._native.{name}", [os.path.join("native", f"{name}.pyx")], **common)
        for name in MODULES
        if (NATIVE / f"{name}.pyx").exists()
    ]
    return cythonize(
        exts,
        include_path=[str(STAGE)],
        compiler_directives={"language_level": "3"},
        build_dir=str(HERE / "build" / "cython"),
    )


setup(ext_modules=extensions())
