"""DistributedDataParallel: 2 gloo processes under torchrun match one process with the same global batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffmem.io import ImageSet, save_image_set
from diffmem.train import train

ARGS = ["--preset", "digits", "--channels", "8", "--dropout", "0", "--batch", "8", "--kimg", "0.032",
        "--lr", "2e-3", "--warmup-kimg", "0.016", "--ema-decay", "0.5", "--snapshot-kimg", "0.016",
        "--log-kimg", "0.008", "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    save_image_set(data, ImageSet(images=rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffmem", "train", "--data", str(data), "--out", str(tmp_path / "ddp"), *ARGS]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    # the same run in this process (one process, whole batch)
    import argparse

    from diffmem.cli.train import add_arguments, resolve

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--data", str(data), "--out", str(tmp_path / "one"), *ARGS])
    model, t = resolve(args)
    # the flags above reach the config both runs train with (channels, batch, duration, EMA: not the preset's)
    assert (model.channels, model.dropout) == (8, 0.0)
    assert (t.batch, t.kimg, t.epochs, t.lr, t.warmup_kimg) == (8, 0.032, None, 2e-3, 0.016)
    assert (t.ema_decay, t.snapshot_kimg, t.log_kimg, t.device) == (0.5, 0.016, 0.008, "cpu")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(data, tmp_path / "one", model, t)
    finally:
        torch.set_num_threads(n)

    one = load_file(str(tmp_path / "one" / "state.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "state.safetensors"))
    assert sorted(one) == sorted(ddp)
    moved = 0.0
    for k in one:  # gradients are averaged in a different order: equal to float32 rounding
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    for k in (k for k in one if k.startswith("model.") and "conv_out.weight" in k):
        moved = float(one[k].abs().max())
    assert moved > 0  # training really changed the zero-initialised output layer
    loss = lambda r: [json.loads(x)["loss"] for x in (tmp_path / r / "stats.jsonl").read_text().splitlines()]  # noqa: E731
    np.testing.assert_allclose(loss("ddp"), loss("one"), rtol=1e-4)
    assert len(loss("one")) == 4
