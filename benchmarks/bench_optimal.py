"""Closed-form optimal denoiser: the streaming implementation against a dense reference-style one.

The dense baseline does what reference implementations of the optimum do: the full N_batch × N_train
matrix of pairwise distances (``torch.cdist``), a softmax over all N_train, then a matrix product.
The streamed one is :class:`diffmem.sample.OptimalDenoiser` (blocks of the training set, online
log-sum-exp). Both run under the same Heun sampler on the same inputs; each (case, method) runs in
its own subprocess, which reports its time and its peak resident memory (``ru_maxrss``).

    .venv/bin/python benchmarks/bench_optimal.py            # all cases, table to stdout
    .venv/bin/python benchmarks/bench_optimal.py --quick    # small cases only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name → (training set, n_train, samples, what is timed, dtype)
CASES = {
    "digits-sample": dict(data="digits", n_train=1797, n=1000, mode="sample", dtype="float64"),
    "cifar50k-sample": dict(data="random", n_train=50_000, n=4, mode="sample", dtype="float64"),
    "cifar50k-eval-b1000": dict(data="random", n_train=50_000, n=1000, mode="eval", dtype="float64"),
    "cifar50k-eval-b1000-f32": dict(data="random", n_train=50_000, n=1000, mode="eval", dtype="float32"),
}
QUICK = ("digits-sample",)
THREADS = 2
REPEATS = 2


def training_set(kind: str, n_train: int) -> np.ndarray:
    if kind == "digits":
        from sklearn.datasets import load_digits

        return np.round(load_digits().images * 255 / 16).astype(np.uint8)[:n_train, None]
    return np.random.default_rng(0).integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(case: str, method: str, out: Path) -> None:
    import torch

    from diffmem.config import SampleConfig
    from diffmem.sample import OptimalDenoiser, sample_seeds

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", THREADS)))
    c = CASES[case]
    dtype = getattr(torch, c["dtype"])
    images = training_set(c["data"], c["n_train"])
    t0 = time.perf_counter()
    if method == "streaming":
        D = OptimalDenoiser(images, dtype=dtype)
    else:
        D = DenseOptimal(images, dtype)
    setup_s = time.perf_counter() - t0
    rss_before = _rss_mb()
    times, cpu_times = [], []
    for _ in range(REPEATS):  # best of REPEATS (the first run also pays for fresh memory pages)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            if c["mode"] == "sample":  # full Heun sampling, 18 steps = 35 evaluations
                x, _ = sample_seeds(D, np.arange(c["n"]), SampleConfig())
            else:  # one evaluation at σ = 2 of a batch of noisy training images
                g = torch.Generator().manual_seed(0)
                y = torch.as_tensor(images[:c["n"]]).to(torch.float64) / 127.5 - 1
                x = D(y + 2.0 * torch.randn(y.shape, generator=g, dtype=torch.float64), torch.tensor(2.0))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    seconds, cpu_seconds = min(times), min(cpu_times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out / f"{method}.npy", x.numpy())
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "setup_s": setup_s, "peak_mb": peak_mb,
                      "rss_before_mb": rss_before}))


class DenseOptimal:
    """Reference-style optimum: full pairwise-distance matrix, softmax over all N (no blocks)."""

    label_dim, sigma_min, sigma_max = 0, 0.0, float("inf")

    def __init__(self, images: np.ndarray, dtype):
        import torch

        self.in_channels, self.resolution = images.shape[1], images.shape[-1]
        self.Y = torch.as_tensor(images).reshape(len(images), -1).to(dtype).div_(127.5).sub_(1.0)

    def __call__(self, x, sigma, labels=None):
        import torch

        xf = x.reshape(x.shape[0], -1).to(self.Y.dtype)
        s = torch.as_tensor(sigma, dtype=self.Y.dtype).reshape(-1, 1)
        d = torch.cdist(xf, self.Y)  # N_batch × N_train distances
        w = torch.softmax(-(d**2) / (2 * s**2), dim=1)
        return (w @ self.Y).reshape(x.shape).to(x.dtype)


def run_case(case: str, tmp: Path, threads: int) -> dict:
    rows = {}
    for method in ("dense", "streaming"):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        r = subprocess.run([sys.executable, __file__, "--child", case, method, str(tmp)], capture_output=True,
                           text=True, env=env)
        if r.returncode != 0:
            rows[method] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        rows[method] = json.loads(r.stdout.strip().splitlines()[-1])
    if all("error" not in v for v in rows.values()):
        a, b = np.load(tmp / "dense.npy"), np.load(tmp / "streaming.npy")
        rows["max_abs_diff"] = float(np.abs(a - b).max())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases only")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"torch threads per run (default {THREADS})")
    ap.add_argument("--cases", nargs="*", choices=sorted(CASES), help="run only these cases")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    cases = args.cases or (QUICK if args.quick else tuple(CASES))
    print(f"# bench_optimal: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {args.threads} torch threads, best of {REPEATS} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| case | N_train × dim | samples | timed | dtype | dense s (CPU s) | streaming s (CPU s) | "
          "dense / streaming, wall (CPU) | dense peak MB | streaming peak MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        c = CASES[case]
        dim = 64 if c["data"] == "digits" else 3072
        with tempfile.TemporaryDirectory() as tmp:
            r = run_case(case, Path(tmp), args.threads)
        d, s = r["dense"], r["streaming"]
        timed = "Heun 18 steps (35 evals)" if c["mode"] == "sample" else "1 eval at σ=2"

        def cell(v, key, fmt):
            return "error: " + v["error"] if "error" in v else format(v[key], fmt)

        ok = "error" not in d and "error" not in s
        ratio = f"{d['seconds'] / s['seconds']:.2f}× ({d['cpu_seconds'] / s['cpu_seconds']:.2f}×)" if ok else "–"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "–"
        print(f"| {case} | {c['n_train']:,} × {dim:,} | {c['n']:,} | {timed} | {c['dtype']} | "
              f"{cell(d, 'seconds', '.2f')} ({cell(d, 'cpu_seconds', '.2f')}) | "
              f"{cell(s, 'seconds', '.2f')} ({cell(s, 'cpu_seconds', '.2f')}) | {ratio} | "
              f"{cell(d, 'peak_mb', ',.0f')} | {cell(s, 'peak_mb', ',.0f')} | {diff} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
