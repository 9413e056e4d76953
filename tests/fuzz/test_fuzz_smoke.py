"""A bounded smoke run of every fuzz target (issue #20 deliverable 1): its corpus, then mutations.

Each target in ``fuzz/`` runs, uninstrumented, its seed corpus (``fuzz/corpus/<target>/``) and a
few thousand inputs made by mutating the seeds and by random bytes, with a fixed seed so a failure
reproduces. Any exception a target lets through is a finding. Then the real atheris harness
(``python -m fuzz.run``) runs a few hundred libFuzzer executions of one target, so that the
instrumented path ``scripts/fuzz.sh`` uses is known to work. About a minute in all.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fuzz

REPO = Path(__file__).resolve().parents[2]
RANDOM_INPUTS = 5000
PER_TARGET_BUDGET = 5.0  # seconds of mutation per target at most, after the corpus


def corpus(name: str) -> list[bytes]:
    files = sorted((fuzz.CORPUS_DIR / name).iterdir())
    assert files, f"fuzz/corpus/{name} is empty"
    return [f.read_bytes() for f in files]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # set an interesting byte
            data[rng.randrange(len(data))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, ord("="), ord(":"), ord("\n")))
        elif op == 2:  # truncate
            del data[rng.randrange(len(data) + 1) :]
        elif op == 3:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 4 and data:  # delete a range
            i = rng.randrange(len(data))
            del data[i : i + rng.randint(1, 16)]
        else:  # splice with another seed
            other = rng.choice(seeds)
            data[rng.randrange(len(data) + 1) :] = other[rng.randrange(len(other) + 1) :]
    return bytes(data)


@pytest.mark.parametrize("name", fuzz.TARGETS)
def test_target_runs_its_corpus_and_random_inputs(name):
    target = fuzz.load(name)
    seeds = corpus(name)
    for seed in seeds:
        target.TestOneInput(seed)
    rng = random.Random(f"callsgw-fuzz-{name}")
    deadline = time.monotonic() + PER_TARGET_BUDGET
    for i in range(RANDOM_INPUTS):
        data = rng.randbytes(rng.randint(0, 64)) if i % 8 == 0 else mutate(rng, seeds)
        try:
            target.TestOneInput(data)
        except Exception as exc:  # a finding: show the input so it can become a regression test
            raise AssertionError(f"fuzz target {name} failed on input {data!r}: {exc!r}") from exc
        if time.monotonic() > deadline:
            break


def test_atheris_harness_runs_and_counts(tmp_path):
    pytest.importorskip("atheris")
    counter = tmp_path / "demux.json"
    work = tmp_path / "corpus"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "demux", "--counter", str(counter), "-runs=500", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(work), str(fuzz.CORPUS_DIR / "demux")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 500 runs" in proc.stderr
    assert json.loads(counter.read_text())["executions"] > 0
