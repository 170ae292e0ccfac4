"""Exact two-nearest-neighbour search: diffmem against the usual approaches and the bare product.

Queries Q (n × D) and a database B (m × D), float32, uniform random (seed 0). Methods, each in its
own subprocess that reports its time and its peak resident memory (``ru_maxrss``) beside the
resident memory once its inputs exist:

- floor:   the bare matrix product Q Bᵀ in 1,000-row query blocks (no exact top-2 can beat one pass)
- diffmem: ``prepare_train`` (deduplication, norms) + ``search`` (blocked GEMM, running top-8,
           exact float64 re-rank, certified; the whole of what ``diffmem measure`` runs)
- mm+topk: ‖b‖² − 2ab per 1,000-row block + topk(2), float32 only (no exact stage, no dedup)
- cdist:   torch.cdist + topk(2) per 1,000-row block (the reference study's approach)
- faiss:   faiss.IndexFlatL2, k = 2
- sklearn: NearestNeighbors(algorithm="brute", n_neighbors=2)

Each method's NN₁/NN₂ are compared with diffmem's. ``--cli`` also times ``diffmem measure`` on
random uint8 CIFAR-sized images (10,000 samples × 50,000 training images by default).

    .venv/bin/python benchmarks/bench_knn.py                  # full size, table to stdout
    .venv/bin/python benchmarks/bench_knn.py --quick          # 2,000 × 10,000
    .venv/bin/python benchmarks/bench_knn.py --cli --write    # + diffmem measure; write results/knn.md
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

METHODS = ("floor", "diffmem", "mm+topk", "cdist", "faiss", "sklearn")
BLOCK = 1000  # query rows per block for the per-block baselines


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(method: str, n: int, m: int, dim: int, threads: int, out: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    B = rng.random((m, dim), dtype=np.float32)
    Q = rng.random((n, dim), dtype=np.float32)
    Qt, Bt = torch.from_numpy(Q), torch.from_numpy(B)
    if method == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    elif method == "sklearn":
        from sklearn.neighbors import NearestNeighbors
    elif method == "diffmem":
        from diffmem.measure import prepare_train, search
    base_rss = _rss_mb()
    ids = dist = None
    t0 = time.perf_counter()
    if method == "floor":
        for i in range(0, n, BLOCK):
            Qt[i:i + BLOCK] @ Bt.T
    elif method == "diffmem":
        nn = search(Q, prepare_train(B))
        ids, dist = nn.ids, np.sqrt(nn.sq_dist)
        extra = {"n_fallback": nn.n_fallback}
    elif method == "mm+topk":
        bn = (Bt * Bt).sum(1)
        parts = []
        for i in range(0, n, BLOCK):
            s = torch.addmm(bn, Qt[i:i + BLOCK], Bt.T, beta=1.0, alpha=-2.0)
            v, j = torch.topk(s, 2, dim=1, largest=False)
            parts.append((j, (v + (Qt[i:i + BLOCK] ** 2).sum(1, keepdim=True)).clamp_min(0).sqrt()))
        ids = torch.cat([p[0] for p in parts]).numpy()
        dist = torch.cat([p[1] for p in parts]).numpy()
    elif method == "cdist":
        parts = []
        for i in range(0, n, BLOCK):
            v, j = torch.topk(torch.cdist(Qt[i:i + BLOCK], Bt), 2, dim=1, largest=False)
            parts.append((j, v))
        ids = torch.cat([p[0] for p in parts]).numpy()
        dist = torch.cat([p[1] for p in parts]).numpy()
    elif method == "faiss":
        index = faiss.IndexFlatL2(dim)
        index.add(B)
        d2, ids = index.search(Q, 2)
        dist = np.sqrt(np.maximum(d2, 0))
    elif method == "sklearn":
        dist, ids = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(B).kneighbors(Q)
    seconds = time.perf_counter() - t0
    res = {"method": method, "seconds": seconds, "base_rss_mb": base_rss, "peak_rss_mb": _maxrss_mb(),
           "inputs_mb": (Q.nbytes + B.nbytes) / 2**20}
    if method == "diffmem":
        res.update(extra)
    if ids is not None:
        np.savez(out.with_suffix(".npz"), ids=np.asarray(ids, np.int64), dist=np.asarray(dist, np.float64))
    out.write_text(json.dumps(res))


def run_child(method: str, args: argparse.Namespace, tmp: Path, tag: str | None = None) -> dict:
    out = tmp / f"{(tag or method).replace(' ', '').replace('#', '_')}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", method, "--n", str(args.n), "--m", str(args.m),
           "--dim", str(args.dim), "--threads", str(args.threads), "--result", str(out)]
    subprocess.run(cmd, env=env, check=True)
    res = json.loads(out.read_text())
    res["npz"] = str(out.with_suffix(".npz")) if out.with_suffix(".npz").exists() else None
    print(f"  {method:8s} {res['seconds']:7.2f} s  peak {res['peak_rss_mb']:7.0f} MB", file=sys.stderr, flush=True)
    return res


def agreement(res: dict, ref: dict) -> str:
    if not res.get("npz") or not ref.get("npz"):
        return "–"
    with np.load(res["npz"]) as a, np.load(ref["npz"]) as b:
        differ = int(np.count_nonzero(np.any(a["ids"] != b["ids"], axis=1)))
        err = np.abs(a["dist"] - b["dist"]).max()
        n = len(a["ids"])
    return f"NN₁/NN₂ differ for {differ} of {n:,} queries; max abs Δd {err:.1e}"


def cli_timing(args: argparse.Namespace, tmp: Path) -> dict:
    """Time `diffmem measure` on random uint8 CIFAR-sized images, peak memory of the process."""
    from diffmem.io import ImageSet, save_image_set

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(args.cli_train, 3, 32, 32), dtype=np.uint8)
    samples = rng.integers(0, 256, size=(args.cli_samples, 3, 32, 32), dtype=np.uint8)
    samples[: args.cli_samples // 2] = train[: args.cli_samples // 2]  # half of them copies
    save_image_set(tmp / "train.npz", ImageSet(train))
    save_image_set(tmp / "samples.npz", ImageSet(samples))
    inputs_mb = (train.nbytes + samples.nbytes) / 2**20
    del train, samples
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    code = (f"import resource, sys, torch; torch.set_num_threads({args.threads}); from diffmem.cli import main; "
            "rc = main(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "file=sys.stderr); sys.exit(rc)")
    cmd = [sys.executable, "-c", code, "measure", "--samples", str(tmp / "samples.npz"), "--train",
           str(tmp / "train.npz"), "--device", "cpu", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"diffmem measure failed: {r.stderr}")
    base = subprocess.run([sys.executable, "-c", "import resource, torch, diffmem.cli, diffmem.measure; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                          env=env, capture_output=True, text=True)
    return {"seconds": seconds, "peak_rss_mb": float(r.stderr.strip().splitlines()[-1]),
            "import_rss_mb": float(base.stdout.strip()), "inputs_mb": inputs_mb, "summary": json.loads(r.stdout)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 queries × 10,000 database vectors")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--m", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--pairs", type=int, default=1, help="run floor and diffmem this many times in pairs")
    p.add_argument("--cli", action="store_true", help="also time `diffmem measure` on uint8 images")
    p.add_argument("--cli-samples", type=int, default=10_000)
    p.add_argument("--cli-train", type=int, default=50_000)
    p.add_argument("--write", action="store_true", help="write benchmarks/results/knn.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.n, args.m, args.dim, args.threads, Path(args.result))
        return
    if args.quick:
        args.n, args.m = 2000, 10_000
        args.cli_samples, args.cli_train = 2000, 10_000
    methods = [s for s in args.methods.split(",") if s]
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"kNN benchmark: {args.n:,} queries × {args.m:,} database × {args.dim:,} float32, "
              f"{args.threads} threads", file=sys.stderr)
        results = {m: run_child(m, args, tmp) for m in methods}
        for r in range(2, args.pairs + 1):  # floor, diffmem (and faiss) again, back to back: ratios under drifting load
            for m in [x for x in ("floor", "diffmem", "faiss") if x in methods]:
                results[f"{m} #{r}"] = run_child(m, args, tmp, f"{m} #{r}")
        cli = cli_timing(args, tmp) if args.cli else None
        ref = results.get("diffmem", {})
        rows = ["| method | time (s) | vs floor | peak RSS (MB) | over inputs (MB) | agreement with diffmem |",
                "|---|---|---|---|---|---|"]
        for m, r in results.items():
            rnd = m.partition(" ")[2]  # "#k" for repeated rounds
            base = results.get(f"floor {rnd}" if rnd and not m.startswith("floor") else "floor", {}).get("seconds")
            ratio = f"{r['seconds'] / base:.2f}×" if base else "–"
            over = r["peak_rss_mb"] - r["base_rss_mb"]
            agree = "(reference: exact)" if m == "diffmem" else agreement(r, ref)
            if m.startswith("diffmem"):
                agree += f"; {r.get('n_fallback', 0)} queries widened"
            rows.append(f"| {m} | {r['seconds']:.2f} | {ratio} | {r['peak_rss_mb']:.0f} | {over:.0f} | {agree} |")
    load_after = os.getloadavg()
    import torch

    inputs_mb = (args.n + args.m) * args.dim * 4 / 2**20
    lines = [
        f"Inputs: {args.n:,} × {args.dim:,} queries and {args.m:,} × {args.dim:,} database vectors, float32 "
        f"({inputs_mb:.0f} MB), uniform random, seed 0; {args.threads} threads. ",
        "'over inputs' = peak RSS − RSS once the inputs exist (libraries imported). "
        "'vs floor': time / the first floor's time (for 'diffmem #k', 'faiss #k': / 'floor #k' of the same round).",
        "",
        *rows,
    ]
    if cli:
        s = cli["summary"]
        lines += [
            "",
            f"`diffmem measure --json` on {args.cli_samples:,} samples × {args.cli_train:,} training images, "
            f"uint8 3×32×32 random (half the samples copies), {args.threads} threads:",
            "",
            "| wall time (s) | peak RSS (MB) | RSS after imports (MB) | image inputs (MB) | over imports + inputs (MB) "
            "| ratio reported | widened |",
            "|---|---|---|---|---|---|---|",
            f"| {cli['seconds']:.1f} | {cli['peak_rss_mb']:.0f} | {cli['import_rss_mb']:.0f} | {cli['inputs_mb']:.0f} "
            f"| {cli['peak_rss_mb'] - cli['import_rss_mb'] - cli['inputs_mb']:.0f} | {s['memorization_ratio']:.4f} "
            f"| {s['n_fallback']} |",
        ]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; torch "
               f"{torch.__version__}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    text = "\n".join(lines)
    print(text)
    if args.write:
        cmd = " ".join(["python", "benchmarks/bench_knn.py", *sys.argv[1:]])
        md = (f"# kNN benchmark\n\nCommand: `{cmd}`  \nDate: {started}  \nMachine: {machine}\n\n{text}\n")
        path = Path(__file__).parent / "results" / "knn.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(md)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
