"""What the held-out baseline adds to a sweep job, against the measurement every snapshot pays anyway.

Per job a sweep measures its held-out images once and fits the k-means cells of the data-copying test
once (:func:`diffmem.measure.prepare_heldout`); per snapshot it then assigns the samples to the cells
and computes C_T (``HeldoutReference.copying``). The baseline is the per-snapshot measurement itself
(``diffmem.measure.measure`` of the samples against the training set). The three are timed in one
process, interleaved, ``--repeats`` times; the table gives each as a range and as a ratio to the
baseline measured in the same round.

    .venv/bin/python benchmarks/bench_heldout.py             # digits and a 32×32 RGB case
    .venv/bin/python benchmarks/bench_heldout.py --quick     # digits only
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

# name → (training images, held-out images, samples, image shape)
CASES = {
    "digits, 512 training images": dict(n_train=512, n_heldout=1000, n=1000, shape="digits"),
    "32×32 RGB, 5,000 training images": dict(n_train=5000, n_heldout=1000, n=1000, shape=(3, 32, 32)),
}
QUICK = ("digits, 512 training images",)


def images(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if case["shape"] == "digits":
        from diffmem.data.digits import load_digits

        src = load_digits().images[rng.permutation(1797)]
        t = src[:case["n_train"]]
        h = src[case["n_train"]:case["n_train"] + case["n_heldout"]]
        s = np.clip(t[rng.integers(0, len(t), case["n"])] + rng.integers(-8, 9, (case["n"], 1, 8, 8)), 0, 255)
        return t, h, s.astype(np.uint8)
    shape = case["shape"]
    t = rng.integers(0, 256, (case["n_train"], *shape), dtype=np.uint8)
    h = rng.integers(0, 256, (case["n_heldout"], *shape), dtype=np.uint8)
    s = rng.integers(0, 256, (case["n"], *shape), dtype=np.uint8)
    return t, h, s


def run(case: dict, repeats: int) -> dict[str, list[float]]:
    from diffmem.config import MeasureConfig
    from diffmem.measure import measure, prepare_heldout, prepare_train

    t, h, s = images(case)
    cfg = MeasureConfig(device="cpu")
    index = prepare_train(t)
    times: dict[str, list[float]] = {"measure": [], "heldout": [], "copying": []}
    for r in range(repeats + 1):  # round 0 warms up (imports, first allocations) and is not counted
        t0 = time.perf_counter()
        m = measure(s, index, cfg)
        t1 = time.perf_counter()
        ref = prepare_heldout(index, h, cfg, case["n"])
        t2 = time.perf_counter()
        ref.copying(s, m.d1)
        t3 = time.perf_counter()
        if r == 0:
            continue
        times["measure"].append(t1 - t0)
        times["heldout"].append(t2 - t1)
        times["copying"].append(t3 - t2)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "heldout.md"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    lines = [
        "# Held-out baseline: cost per sweep job against the per-snapshot measurement",
        "",
        f"`python benchmarks/bench_heldout.py{' --quick' if args.quick else ''} --repeats {args.repeats} "
        f"--threads {args.threads}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.threads} thread(s); load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} at the start (a shared machine: other jobs ran alongside). 1,000 samples, 1,000 held-out "
        "images, default cells (20) and τ (20/m). Ranges over the repeats after one warm-up round (imports); ratios "
        "to the measurement of the same round. For scale: a training job of the digits preset takes 126–166 s.",
        "",
        "| case | measurement of the samples (baseline, per snapshot) | held-out stage (once per job) | ratio | "
        "C_T of a snapshot | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, case in CASES.items():
        if args.quick and name not in QUICK:
            continue
        t = run(case, args.repeats)
        r_h = [h / m for h, m in zip(t["heldout"], t["measure"])]
        r_c = [c / m for c, m in zip(t["copying"], t["measure"])]

        def span(v, unit="s"):
            return f"{min(v):.3f}–{max(v):.3f} {unit}".strip()

        lines.append(f"| {name} | {span(t['measure'])} | {span(t['heldout'])} | {span(r_h, '×')} | "
                     f"{span(t['copying'])} | {span(r_c, '×')} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
