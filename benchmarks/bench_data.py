"""Dataset layer: build times, the restricted CIFAR-10 reader and the duplicate search, each against a baseline.

Cases (each runs in its own subprocess, which reports its time and peak resident memory):

- ``cli-digits-64``: ``diffmem data --source digits --size 64 --seed 0`` end to end (the issue's goal:
  a few seconds at most); baseline: ``python -c "import diffmem"`` (the interpreter start floor).
- ``cifar-read``: read a CIFAR-10 python archive of 50,000 images with the restricted unpickler;
  baseline: the customary unrestricted ``pickle.load(f, encoding="bytes")`` of the same members.
- ``duplicates-N``: the exact nearest-other-image search of the duplicate report on N random
  3×32×32 images; baseline: the bare float64 matrix products of the same half-matrix (the floor).
- ``cifar-build-1k``: ``make_dataset`` of 1,000 CIFAR images at 16×16 (box).
- ``shapes-5000``: render the default shapes source (16×16 and 32×32).

    .venv/bin/python benchmarks/bench_data.py            # all cases (the 20k duplicate search takes a minute or more)
    .venv/bin/python benchmarks/bench_data.py --quick    # skips the 20k duplicate search
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _py2_str(b: bytes) -> bytes:
    import struct

    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _batch_pickle(x: np.ndarray, y: np.ndarray) -> bytes:
    """One data_batch as NumPy 1.x under Python 2 pickled it (protocol 2)."""
    import struct

    def i(v):
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + i(0) + i(1) + b"\x87R(" + i(3) + _py2_str(b"|") + b"NNN"
             + b"J\xff\xff\xff\xff" * 2 + i(0) + b"tb")
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + _py2_str(b"b") + b"\x87R("
           + i(1) + i(x.shape[0]) + i(x.shape[1]) + b"\x86" + dtype + b"\x89" + _py2_str(x.tobytes()) + b"tb")
    labels = b"](" + b"".join(i(int(v)) for v in y) + b"e"
    return b"\x80\x02}(" + _py2_str(b"data") + arr + _py2_str(b"labels") + labels + b"u."


def write_cifar(path: Path, n_per_batch: int = 10_000) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for b in range(1, 6):
            x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            data = _batch_pickle(x, rng.integers(0, 10, n_per_batch))
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{b}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _child(case: str, arg: str) -> dict:
    """Run one case in this process; return its seconds."""
    t0 = time.perf_counter()
    if case == "import":
        import diffmem  # noqa: F401
    elif case == "cifar-read":
        from diffmem.data import load_source

        s = load_source(f"cifar10:{arg}")
        assert s.images.shape == (50_000, 3, 32, 32)
    elif case == "cifar-read-pickle":
        with tarfile.open(arg) as tar:
            for m in tar:
                if "data_batch" in m.name:
                    import pickle

                    d = pickle.loads(tar.extractfile(m).read(), encoding="bytes")
                    assert d[b"data"].shape == (10_000, 3072)
    elif case.startswith("duplicates-") or case.startswith("gemm-floor-"):
        n = int(case.rsplit("-", 1)[1])
        x = np.random.default_rng(1).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        t0 = time.perf_counter()
        if case.startswith("duplicates-"):
            from diffmem.data.duplicates import nearest_other

            nearest_other(x)
        else:
            from diffmem.data.duplicates import BLOCK_ROWS

            f = x.reshape(n, -1)
            for s in range(0, n, BLOCK_ROWS):
                xi = f[s : s + BLOCK_ROWS].astype(np.float64)
                for t in range(s, n, BLOCK_ROWS):
                    xi @ f[t : t + BLOCK_ROWS].astype(np.float64).T
    elif case == "cifar-build-1k":
        from diffmem.config import DataConfig
        from diffmem.data import make_dataset

        make_dataset(DataConfig(source=f"cifar10:{arg}", size=1000, resolution=16))
    elif case.startswith("shapes-"):
        from diffmem.data.shapes import render_shapes

        render_shapes(int(case.rsplit("-", 1)[1]), 10, 0.5, 5000)
    else:
        raise SystemExit(f"unknown case {case}")
    return {"seconds": time.perf_counter() - t0}


def run_case(case: str, arg: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    if case == "cli-digits-64":
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([str(Path(PY).parent / "diffmem"), "data", "--source", "digits", "--size", "64", "--seed",
                            "0", "--out", f"{d}/ds"], check=True, capture_output=True, env=env)
            return {"seconds": time.perf_counter() - t0, "peak_mb": None}
    if case == "python-import-diffmem":
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", "import diffmem"], check=True, env=env)
        return {"seconds": time.perf_counter() - t0, "peak_mb": None}
    out = subprocess.run([PY, __file__, "--child", case, arg], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        r = _child(*a.child)
        r["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r))
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tgz = Path(d) / "cifar-10-python.tar.gz"
        write_cifar(tgz)
        pairs = [("cli-digits-64", "python-import-diffmem"), ("cifar-read", "cifar-read-pickle"),
                 ("duplicates-5000", "gemm-floor-5000")]
        if not a.quick:
            pairs.append(("duplicates-20000", "gemm-floor-20000"))
        singles = ["cifar-build-1k", "shapes-16", "shapes-32"]
        for case, base in pairs:
            r, b = run_case(case, str(tgz)), run_case(base, str(tgz))
            rows.append((case, r, base, b))
            print(f"{case}: {r['seconds']:.2f} s vs {base}: {b['seconds']:.2f} s", file=sys.stderr)
        for case in singles:
            r = run_case(case, str(tgz))
            rows.append((case, r, None, None))
            print(f"{case}: {r['seconds']:.2f} s", file=sys.stderr)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print("| case | time (s) | peak RSS (MB) | baseline | baseline time (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for case, r, base, b in rows:
        mb = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "–"
        if base:
            print(f"| {case} | {r['seconds']:.2f} | {mb} | {base} | {b['seconds']:.2f} | "
                  f"{r['seconds'] / b['seconds']:.2f}× |")
        else:
            print(f"| {case} | {r['seconds']:.2f} | {mb} | – | – | – |")


if __name__ == "__main__":
    main()
