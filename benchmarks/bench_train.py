"""Training throughput of the digits preset: diffmem's training loop against the reference network's eager step.

Methods, each in its own subprocess (so each starts from PyTorch's defaults), alternated over
``--rounds`` rounds, all with the same thread count, batch and model configuration:

- ``reference``: the preset's network (``build_denoiser``, 180k parameters, 1×8×8, batch 64) in a
  plain eager PyTorch training step: random batch, σ ~ lognormal(P_mean, P_std), noise, the EDM loss,
  ``backward``, ``torch.optim.Adam`` (its default per-tensor update), a per-tensor EMA, ``loss.item()``;
  nothing else changed (the glibc allocator as it comes, ``--threads`` intra-op threads). This is the
  baseline of every ratio.
- ``diffmem``: ``diffmem.train.train`` with the ``digits`` preset exactly as ``diffmem train --preset
  digits`` runs it (the whole loop: data order and draws from (seed, step), flat Adam and EMA, stats
  lines; allocator thresholds), given ``--threads`` threads (of which its rule for small steps uses one).
- ablations (``--ablations``): ``reference-1thread`` (the baseline on one intra-op thread),
  ``reference+alloc`` (the baseline with diffmem's allocator thresholds), ``diffmem-Nthreads`` (diffmem
  made to use all ``--threads`` intra-op threads).

Throughput: images/s over the steps after ``--warmup`` (from the timed loop, or for diffmem from
``stats.jsonl``). ``--compile`` also trains with ``train.compile`` twice, first with an empty inductor
cache, then with the cache the first run left, and reports the time to the first step (the warm-up)
and the throughput after it.

    .venv/bin/python benchmarks/bench_train.py                      # 3 rounds, table to stdout
    .venv/bin/python benchmarks/bench_train.py --ablations --compile --write   # results/train.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("reference", "diffmem")
ABLATIONS = ("reference-1thread", "reference+alloc", "diffmem-Nthreads")
RESULTS = Path(__file__).parent / "results" / "train.md"


def _configs():
    from diffmem.config import MODEL_PRESETS, TRAIN_PRESETS

    return MODEL_PRESETS["digits"], TRAIN_PRESETS["digits"]


def child_reference(data: Path, steps: int, warmup: int, threads: int, alloc: bool) -> dict:
    """The plain eager training step of the preset's network; images/s after ``warmup`` steps."""
    import copy

    import numpy as np
    import torch

    from diffmem.nn import build_denoiser

    torch.set_num_threads(threads)
    if alloc:
        from diffmem.runtime import tune_allocator

        tune_allocator()
    m, t = _configs()
    images = torch.from_numpy(np.load(data, allow_pickle=False)["images"])
    m = dataclasses.replace(m, in_channels=int(images.shape[1]), resolution=int(images.shape[-1]))
    torch.manual_seed(0)
    net = build_denoiser(m).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, betas=t.betas, eps=t.eps)
    sd, B = m.sigma_data, t.batch
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        y = images[torch.randint(len(images), (B,))].float() / 127.5 - 1
        sigma = (torch.randn(B) * m.P_std + m.P_mean).exp()
        n = torch.randn_like(y)
        D = net(y + sigma[:, None, None, None] * n, sigma)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2  # EDM loss weight λ(σ)
        loss = (weight[:, None, None, None] * (D - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.copy_(pn.detach().lerp(pe, t.ema_decay))
        loss.item()
    dt = time.perf_counter() - t0
    return {"images_per_s": steps * B / dt, "steps": steps, "seconds": dt}


def child_diffmem(data: Path, steps: int, warmup: int, threads: int, force_threads: bool, compile_: bool,
                  work: Path) -> dict:
    """``diffmem.train.train`` with the digits preset; images/s from stats.jsonl after ``warmup`` steps."""
    import torch

    from diffmem.train import train

    torch.set_num_threads(threads)
    m, t = _configs()
    t = dataclasses.replace(t, kimg=(warmup + steps) * t.batch / 1000, device="cpu", compile=compile_)
    if compile_:
        t = dataclasses.replace(t, log_kimg=t.batch / 1000)  # a line per step: the first one times the warm-up
    run = work / "run"
    t0 = time.time()
    train(data, run, m, t, threads=threads if force_threads else None)
    stats = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    start = next(s for s in stats if s["step"] >= warmup)
    end = stats[-1]
    dt = end["time"] - start["time"]
    out = {"images_per_s": (end["kimg"] - start["kimg"]) * 1000 / dt, "steps": end["step"] - start["step"],
           "seconds": dt}
    if compile_:
        out["first_step_s"] = stats[0]["time"] - t0  # includes data loading and model set-up (< 1 s)
    return out


def _busy_seconds() -> float:
    """CPU-seconds all CPUs have been busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def run_child(method: str, args: argparse.Namespace, data: Path, work: Path, env_extra: dict | None = None) -> dict:
    """Run one measurement in a subprocess; also how busy the machine's other processes kept the CPUs meanwhile
    (busy CPU-seconds of the machine minus the child's own, per second and CPU)."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{method}.json"
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--result", str(out)]
    env = dict(os.environ, **(env_extra or {}))
    load0, busy0, wall0 = os.getloadavg()[0], _busy_seconds(), time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    others = max(0.0, _busy_seconds() - busy0 - own) / ((time.monotonic() - wall0) * (os.cpu_count() or 1))
    res = json.loads(out.read_text())
    res.update(method=method, load_before=load0, load_after=os.getloadavg()[0], others_busy=others)
    print(f"  {method:18s} {res['images_per_s']:7.0f} images/s  (load {load0:.1f} → {res['load_after']:.1f}; "
          f"other processes kept the CPUs {others:.0%} busy)", file=sys.stderr, flush=True)
    return res


def make_data(path: Path, size: int) -> None:
    """``size`` images of scikit-learn's digits, as the preset trains on (class-balanced subset, seed 0)."""
    from diffmem.config import DataConfig
    from diffmem.data import build_dataset, load_dataset
    from diffmem.io import save_image_set

    d = build_dataset(DataConfig(source="digits", size=size), path.parent / "dataset")
    save_image_set(path, load_dataset(d)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads given to both sides (diffmem's rule runs a small step on one of them)")
    ap.add_argument("--steps", type=int, default=400, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=100, help="untimed steps first (the first ones run slower)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of alternating methods")
    ap.add_argument("--size", type=int, default=128, help="training images (digits)")
    ap.add_argument("--ablations", action="store_true", help="also " + ", ".join(ABLATIONS))
    ap.add_argument("--compile", action="store_true", help="also train.compile, with a cold then a warm cache")
    ap.add_argument("--write", action="store_true", help="write the tables into benchmarks/results/train.md "
                    "(its generated block; the notes around it are kept)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.child.startswith("reference"):
            res = child_reference(a.data, a.steps, a.warmup, 1 if a.child == "reference-1thread" else a.threads,
                                  alloc=a.child == "reference+alloc")
        else:
            res = child_diffmem(a.data, a.steps, a.warmup, a.threads, force_threads=a.child == "diffmem-Nthreads",
                                compile_=a.child.startswith("compile"), work=a.result.parent / a.child)
        a.result.write_text(json.dumps(res))
        return

    import torch

    methods = METHODS + (ABLATIONS if a.ablations else ())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "digits.npz"
        make_data(data, a.size)
        rounds = []
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}", file=sys.stderr, flush=True)
            rounds.append({m: run_child(m, a, data, work / f"r{r}") for m in methods})
        compiled = []
        if a.compile:
            cache = work / "inductor-cache"
            for kind in ("cold", "warm"):
                res = run_child(f"compile-{kind}", a, data, work / f"c-{kind}",
                                {"TORCHINDUCTOR_CACHE_DIR": str(cache)})
                compiled.append(res)
    text = report(a, methods, rounds, compiled, started, torch.__version__)
    print(text)
    if a.write:
        write_results(text)
        print(f"wrote {RESULTS}", file=sys.stderr)


BEGIN, END = "<!-- bench_train.py: generated, begin -->", "<!-- bench_train.py: generated, end -->"


def write_results(text: str) -> None:
    """Replace the generated block of results/train.md (the notes around it are kept)."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = block + "\n"
    RESULTS.write_text(new)


def report(a, methods, rounds, compiled, started, torch_version) -> str:
    ratio = [r["diffmem"]["images_per_s"] / r["reference"]["images_per_s"] for r in rounds]
    lines = [
        f"Command: `python benchmarks/bench_train.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {started}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs; torch {torch_version}; "
        f"process priority nice {os.nice(0)}; "
        f"{a.threads} threads on both sides; digits preset (batch 64, 1×8×8), {a.size} training images; "
        f"{a.steps} timed steps after {a.warmup} untimed ones per measurement", "",
        "| round | " + " | ".join(f"{m} (images/s)" for m in methods)
        + " | diffmem / reference | load average | CPUs busy with other processes |",
        "|---|" + "---|" * len(methods) + "---|---|---|",
    ]
    for i, r in enumerate(rounds):
        loads = [r[m]["load_before"] for m in methods] + [r[methods[-1]]["load_after"]]
        others = [r[m]["others_busy"] for m in methods]
        lines.append(f"| {i + 1} | " + " | ".join(f"{r[m]['images_per_s']:,.0f}" for m in methods)
                     + f" | {ratio[i]:.2f}× | {min(loads):.1f}–{max(loads):.1f} | "
                     f"{min(others):.0%}–{max(others):.0%} |")
    lines += ["", f"**diffmem / reference: median {statistics.median(ratio):.2f}× over {len(ratio)} rounds** "
              f"(range {min(ratio):.2f}–{max(ratio):.2f}×)."]
    if len(methods) > 2:
        lines.append("")
        for m in methods[2:]:
            rr = [r[m]["images_per_s"] / r["reference"]["images_per_s"] for r in rounds]
            lines.append(f"- {m} / reference: median {statistics.median(rr):.2f}× (range {min(rr):.2f}–{max(rr):.2f}×)")
    if compiled:
        ref = statistics.median(r["reference"]["images_per_s"] for r in rounds)
        lines += ["", "`train.compile` (`diffmem train --compile`), inductor cache in a fresh directory:", "",
                  "| cache | time to the first step (s) | images/s after warm-up | / median reference | load | "
                  "CPUs busy with other processes |",
                  "|---|---|---|---|---|---|"]
        for c in compiled:
            lines.append(f"| {c['method'].split('-')[1]} | {c['first_step_s']:.1f} | {c['images_per_s']:,.0f} | "
                         f"{c['images_per_s'] / ref:.2f}× | {c['load_before']:.1f}–{c['load_after']:.1f} | "
                         f"{c['others_busy']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
