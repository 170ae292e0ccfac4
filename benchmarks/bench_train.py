"""Training throughput (images/s): the `digits` preset at 8×8 and `paper-basic` at 32×32, eager vs torch.compile.

One training step = σ and noise draws, the preconditioned loss, backward, Adam and the EMA update, as in
``diffmem.train.loop``. The `digits` row is also measured through the whole loop (``diffmem.train.train``,
images/s from stats.jsonl). Run::

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 20] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffmem.config import MODEL_PRESETS, TRAIN_PRESETS, ModelConfig, TrainConfig
from diffmem.io import ImageSet, save_image_set
from diffmem.nn import build_denoiser
from diffmem.train import train
from diffmem.train.ema import EMAUpdater, make_ema
from diffmem.train.losses import per_sample_loss, sample_sigma

SHAPES = {"digits": (1, 8), "paper-basic": (3, 32)}  # (channels, resolution) of the benchmark data


def _step_fn(D, ema, opt, model: ModelConfig, t: TrainConfig, batch: int, device, precision: str):
    c, r = model.in_channels, model.resolution
    y = torch.rand(batch, c, r, r, device=device) * 2 - 1

    ema_update = EMAUpdater(ema, D)

    def step() -> None:
        u = torch.rand(batch, device=device, dtype=torch.float64)
        z = torch.randn(batch, device=device, dtype=torch.float64)
        n = torch.randn_like(y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = per_sample_loss(D, y, sample_sigma(model, t, u, z), n, None, model).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(0.999)

    return step


def bench_step(preset: str, batch: int, steps: int, warmup: int, compile_: bool, device, precision: str) -> dict:
    m, t = MODEL_PRESETS[preset], TRAIN_PRESETS[preset]
    c, r = SHAPES[preset]
    m = dataclasses.replace(m, in_channels=c, resolution=r)
    torch.manual_seed(0)
    D = build_denoiser(m).to(device).train()
    ema = make_ema(D)
    opt = torch.optim.Adam(D.parameters(), lr=t.lr)
    net = torch.compile(D) if compile_ else D
    step = _step_fn(net, ema, opt, m, t, batch, device, precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    return {"preset": preset, "mode": "compile" if compile_ else "eager", "precision": precision,
            "params": sum(p.numel() for p in D.parameters()), "shape": f"{c}×{r}×{r}", "batch": batch,
            "steps": steps, "images_per_s": batch * steps / dt, "steps_per_s": steps / dt, "first_step_s": first_s}


def bench_loop(steps: int, device) -> dict:
    """The `digits` preset through the whole loop (data order, checkpoints, stats) on random 8×8 images."""
    t = TRAIN_PRESETS["digits"]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "d.npz"
        save_image_set(data, ImageSet(images=rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)))
        tt = dataclasses.replace(t, kimg=steps * t.batch / 1000, snapshot_kimg=None, log_kimg=t.batch / 1000,
                                 device=str(device))
        t0 = time.perf_counter()
        train(data, Path(d) / "run", MODEL_PRESETS["digits"], tt)
        wall = time.perf_counter() - t0
        stats = [json.loads(x) for x in (Path(d) / "run" / "stats.jsonl").read_text().splitlines()]
    ips = [s["images_per_s"] for s in stats[len(stats) // 4:]]  # skip the first quarter (warm-up)
    return {"preset": "digits", "mode": "eager, whole loop", "precision": "fp32", "batch": t.batch, "steps": steps,
            "images_per_s": float(np.median(ips)), "steps_per_s": float(np.median(ips)) / t.batch,
            "wall_s_incl_setup": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps after the first")
    ap.add_argument("--paper-batch", type=int, default=32, help="batch for paper-basic (the recipe's 512 is split "
                                                                  "into per-device batches anyway)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast)")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--presets", default="digits,paper-basic")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = []
    for preset in a.presets.split(","):
        batch = TRAIN_PRESETS["digits"].batch if preset == "digits" else a.paper_batch
        steps = a.steps * (5 if preset == "digits" else 1)
        for comp in ([False, True] if a.compile else [False]):
            rows.append(bench_step(preset, batch, steps, a.warmup, comp, device, a.precision))
            print(json.dumps(rows[-1]), flush=True)
    if not a.skip_loop:
        rows.append(bench_loop(a.steps * 5, device))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"device {a.device}")
    print("| preset | mode | precision | shape | batch | images/s | steps/s | first step (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['mode']} | {r['precision']} | {r.get('shape', '1×8×8')} | {r['batch']} | "
              f"{r['images_per_s']:.1f} | {r['steps_per_s']:.2f} | {r.get('first_step_s', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
