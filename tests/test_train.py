"""The training loop: loss decreases, snapshots round-trip, resume is bit-identical, bad states refused."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffmem.config import ModelConfig, TrainConfig
from diffmem.errors import RunError, UsageError
from diffmem.io import ImageSet, save_image_set
from diffmem.nn import build_denoiser
from diffmem.train import list_snapshots, load_denoiser, train
from diffmem.train.checkpoints import save_denoiser
from diffmem.train.dataset import DataOrder, load_training_data
from diffmem.train.ema import EMAUpdater, ema_beta, make_ema

MODEL = ModelConfig(channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(), dropout=0.0, precond="edm")
TRAIN = TrainConfig(kimg=0.048, batch=8, lr=2e-3, warmup_kimg=0.0, warmup_epochs=None, ema_mode="constant",
                    ema_decay=0.9, ema_halflife_epochs=None,
                    snapshot_kimg=0.016, log_kimg=0.008, device="cpu")


def _digits_like(n: int, labels: bool = False, seed: int = 0) -> ImageSet:
    """n distinct 8×8 blob images (a digits stand-in)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    imgs = []
    for _ in range(n):
        cy, cx, r = rng.uniform(2, 6), rng.uniform(2, 6), rng.uniform(1.2, 3)
        imgs.append(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
    images = np.asarray(imgs)[:, None].round().astype(np.uint8)
    return ImageSet(images=images, labels=(np.arange(n) % 3).astype(np.int64) if labels else None)


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "d16.npz"
    save_image_set(p, _digits_like(16))
    return p


def _tensors(path):
    return load_file(str(path))


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_loss_finite_and_decreasing(data16, tmp_path):
    t = dataclasses.replace(TRAIN, kimg=0.96, batch=16, log_kimg=0.016, snapshot_kimg=None, lr=3e-3)
    run = train(data16, tmp_path / "run", MODEL, t)
    losses = [json.loads(x)["loss"] for x in (run / "stats.jsonl").read_text().splitlines()]
    assert len(losses) == 60 and all(np.isfinite(losses))
    assert np.mean(losses[-15:]) < 0.75 * np.mean(losses[:15])


@pytest.mark.slow
def test_resume_is_bit_identical(data16, tmp_path):
    # dropout, gradient accumulation, batches spanning epochs (batch 24 > 16 images), EMA by half-life
    m = dataclasses.replace(MODEL, dropout=0.2)
    t = dataclasses.replace(TRAIN, kimg=0.144, batch=24, batch_per_device=8, ema_mode="halflife", ema_decay=None,
                            ema_halflife_kimg=0.05, ema_rampup_ratio=0.5, snapshot_kimg=0.048, warmup_kimg=0.05,
                            data_order="reshuffle")
    whole = train(data16, tmp_path / "whole", m, t)
    part = train(data16, tmp_path / "part", m, t, stop_after_steps=2)
    assert not (part / "final.safetensors").exists()
    assert json.loads((part / "manifest.json").read_text())["status"] == "running"
    train(data16, part, m, t)  # the same call again resumes
    _assert_same_tensors(_tensors(whole / "final.safetensors"), _tensors(part / "final.safetensors"))
    _assert_same_tensors(_tensors(whole / "state.safetensors"), _tensors(part / "state.safetensors"))
    assert [k for k, _ in list_snapshots(part)] == [0.048, 0.096, 0.144]
    lines = lambda r: [json.loads(x)["loss"] for x in (r / "stats.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(whole) == lines(part)


@pytest.mark.slow
def test_run_dir_layout_reuse_and_refusals(data16, tmp_path):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run = train(data16, tmp_path / "run", MODEL, TRAIN)
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is left as it was
    assert {p.name for p in run.iterdir()} >= {"manifest.json", "config.json", "stats.jsonl", "checkpoints",
                                               "final.safetensors", "state.safetensors"}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["resolution"] == 8 and cfg["model"]["in_channels"] == 1 and cfg["model"]["label_dim"] == 0
    assert [k for k, _ in list_snapshots(run)] == [0.016, 0.032, 0.048]
    before = (run / "final.safetensors").stat().st_mtime_ns
    train(data16, run, MODEL, TRAIN)  # complete: reused, not redone
    assert (run / "final.safetensors").stat().st_mtime_ns == before
    with pytest.raises(UsageError, match=r"different config \(train.lr: 0.002 there vs 0.001 now\)"):
        train(data16, run, MODEL, dataclasses.replace(TRAIN, lr=1e-3))
    # a snapshot rebuilds its model alone; the nearest snapshot is chosen by kimg
    D, mcfg = load_denoiser(run, snapshot_kimg=0.03)
    assert mcfg.channels == 8 and D.sigma_max == float("inf")
    D2, _ = load_denoiser(run / "checkpoints" / "snapshot-000000.032.safetensors")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(D(x, torch.full((4,), 0.7)), D2(x, torch.full((4,), 0.7)))


def test_snapshot_round_trip_reproduces_outputs(tmp_path):
    cfg = dataclasses.replace(MODEL, resolution=8, in_channels=1, label_dim=5, embedding="fourier",
                              encoder="residual", arch="ncsnpp")
    D = build_denoiser(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in D.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_denoiser(tmp_path / "s.safetensors", D, cfg, kimg=1.0)
    D2, cfg2 = load_denoiser(tmp_path / "s.safetensors")
    assert cfg2 == cfg
    x, s, y = torch.randn(5, 1, 8, 8), torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0]), torch.tensor([0, 1, 2, 3, 4])
    out = D(x, s, y)
    assert torch.equal(out, D2(x, s, y)) and out.abs().max() > 0


def test_damaged_or_foreign_files_are_refused(tmp_path):
    cfg = dataclasses.replace(MODEL, resolution=8, in_channels=1)
    path = tmp_path / "s.safetensors"
    save_denoiser(path, build_denoiser(cfg), cfg)
    data = bytearray(path.read_bytes())
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="damaged or not a safetensors file"):
        load_denoiser(tmp_path / "cut.safetensors")
    data[-3] ^= 0xFF  # one flipped bit pattern inside the last tensor
    (tmp_path / "flip.safetensors").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="SHA-256"):
        load_denoiser(tmp_path / "flip.safetensors")
    import pickle

    (tmp_path / "pickled.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(UsageError, match="damaged or not a safetensors file"):
        load_denoiser(tmp_path / "pickled.safetensors")


def test_snapshot_of_an_earlier_network_layout_is_refused(tmp_path):
    from diffmem.train.checkpoints import SNAPSHOT_FORMAT, write_tensors

    cfg = dataclasses.replace(MODEL, resolution=8, in_channels=1)
    write_tensors(tmp_path / "old.safetensors", build_denoiser(cfg).state_dict(),
                  {"format": SNAPSHOT_FORMAT, "config": cfg})
    with pytest.raises(UsageError, match="network layout 1 is not valid; expected layout 2"):
        load_denoiser(tmp_path / "old.safetensors")


def test_damaged_state_is_refused_not_restarted(data16, tmp_path):
    run = train(data16, tmp_path / "run", MODEL, TRAIN, stop_after_steps=1)
    state = run / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UsageError, match="state.safetensors: damaged"):
        train(data16, run, MODEL, TRAIN)
    assert len(state.read_bytes()) == 100  # left for the user to inspect, never overwritten


def test_non_finite_loss_stops_keeping_the_last_good_state(data16, tmp_path, monkeypatch):
    import diffmem.train.step as hot_path

    real = hot_path.per_sample_loss
    calls = []

    def poisoned(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) == 4 else out

    monkeypatch.setattr(hot_path, "per_sample_loss", poisoned)
    t = dataclasses.replace(TRAIN, state_kimg=0.008)
    with pytest.raises(RunError, match=r"loss is nan at step 3 \(0.024 kimg\).*last good state"):
        train(data16, tmp_path / "run", MODEL, t)
    meta_step = json.loads(_meta(tmp_path / "run" / "state.safetensors")["step"])
    assert meta_step == 3 and not (tmp_path / "run" / "final.safetensors").exists()


def _meta(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_data_order_is_an_epoch_permutation_from_the_seed():
    o = DataOrder(n=10, batch=4, seed=7, order="reshuffle")
    stream = np.concatenate([o.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # reshuffled each epoch
    assert np.array_equal(DataOrder(10, 4, 7, "reshuffle").indices(3), o.indices(3))  # stateless: step → indices
    other_seed = DataOrder(10, 10, 8, "reshuffle").indices(0)
    assert not np.array_equal(other_seed, DataOrder(10, 10, 7, "reshuffle").indices(0))


def test_fixed_data_order_repeats_one_permutation():
    o = DataOrder(n=10, batch=4, seed=7, order="fixed")
    stream = np.concatenate([o.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and np.array_equal(stream[:10], stream[10:])
    assert np.array_equal(stream[:10], np.random.RandomState(7).permutation(10))
    assert np.array_equal(DataOrder(10, 4, 7, "fixed").indices(3), o.indices(3))  # stateless: step → indices


def test_ema_beta_closed_forms():
    B = 512
    assert ema_beta(TrainConfig(ema_mode="constant", ema_decay=0.999), 10_000, 128, 1000) == 0.999
    # halflife: 0.5^(B / h), h = min(halflife, 0.05 · images seen before the step)
    t = TrainConfig(ema_mode="halflife", ema_halflife_kimg=500.0, ema_halflife_epochs=None, ema_rampup_ratio=0.05)
    assert ema_beta(t, 1_000_000, B, 1000) == pytest.approx(0.5 ** (B / 50_000), rel=1e-14)  # ramp-up: 0.05 × 1M
    assert ema_beta(t, 100_000_000, B, 1000) == pytest.approx(0.5 ** (B / 500_000), rel=1e-14)  # full half-life
    assert ema_beta(t, 0, B, 1000) == 0.0  # the first step: h = 0
    # compensated (the default, 10 epochs = |D|/100 kimg): 0.5^(512 / (h·50,000/|D|)) → 0.5^(512/500,000)
    for n in (1_000, 50_000):
        assert ema_beta(TrainConfig(batch=64), 10**9, 64, n) == pytest.approx(0.5 ** (512 / 500_000), rel=1e-14)
    assert ema_beta(TrainConfig(), 10**9, B, 150) == pytest.approx(0.5 ** (512 * 150 / 1_000 / 50_000), rel=1e-14)
    assert ema_beta(TrainConfig(), 10**9, B, 64) == 0.0  # 10 epochs of 64 images: 0 whole kimg
    # final: ema_decay / 0.5^(B/500,000) · 0.5^(B / (h·ρ)) settles at ema_decay
    f = TrainConfig(ema_mode="final", ema_decay=0.9)
    assert ema_beta(f, 10**9, 128, 2_000) == pytest.approx(0.9, rel=1e-14)
    assert ema_beta(f, 40_000, 128, 2_000) == pytest.approx(0.9 / 0.5 ** (128 / 500_000) * 0.5 ** (128 / 2_000 / 25),
                                                             rel=1e-14)


def test_learning_rate_warm_up_counts_images_before_the_step():
    from diffmem.train.schedule import learning_rate

    t = TrainConfig(lr=1e-3)  # 200 epochs = |D|/5 kimg, rounded down to whole kimg
    assert [learning_rate(t, k, 64) for k in (0, 6_000, 12_000, 20_000)] == [0.0, 5e-4, 1e-3, 1e-3]  # 12 kimg
    flat = dataclasses.replace(t, warmup_kimg=0.0, warmup_epochs=None)
    assert (learning_rate(flat, 0, 64), learning_rate(flat, 1, 64)) == (0.0, 1e-3)  # even without warm-up


def test_ema_update_matches_the_per_tensor_formula_bit_for_bit():
    """ema ← model + β·(ema − model) for every parameter (torch's lerp), buffers copied, also after a
    state is loaded in place into both modules (the updater keeps the same tensors)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(6, 3))
    ema = make_ema(net)
    update = EMAUpdater(ema, net)
    for step, beta in enumerate((0.99, 0.5, 0.0)):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        if step == 1:  # a resumed state is loaded in place: the gathered lists still see it
            ema.load_state_dict({k: v + 1 for k, v in ema.state_dict().items()})
        want = [pm.detach().lerp(pe, beta) for pe, pm in zip(ema.parameters(), net.parameters())]
        update(beta)
        for got, w in zip(ema.parameters(), want):
            assert torch.equal(got, w)
        assert torch.equal(ema[1].running_mean, net[1].running_mean)
    for pe, pm in zip(ema.parameters(), net.parameters()):  # β = 0: the EMA equals the weights
        assert torch.equal(pe, pm)


def test_labels_from_the_data(tmp_path):
    save_image_set(tmp_path / "l.npz", _digits_like(6, labels=True))
    td = load_training_data(tmp_path / "l.npz")
    assert td.label_dim == 3 and td.labels.tolist() == [0, 1, 2, 0, 1, 2]
    save_image_set(tmp_path / "u.npz", ImageSet(images=_digits_like(6).images, labels=np.full(6, -1)))
    assert load_training_data(tmp_path / "u.npz").label_dim == 0


def test_bad_training_options_are_refused(data16, tmp_path):
    """train() refuses a config that cannot run before anything is written, naming the field by its config path."""
    cases = [
        (dict(epochs=3.0), r"^train.kimg: 0.048 is not valid; expected exactly one of train.kimg and train.epochs "
                           r"\(the other null\); train.epochs is 3.0$"),
        (dict(batch_per_device=3), r"^train.batch_per_device: 3 is not valid; expected a divisor of the 8 images"),
        (dict(warmup_epochs=200.0), r"^train.warmup_kimg: 0.0 is not valid; expected exactly one of train.warmup_kimg "
                                    r"and train.warmup_epochs \(the other null\); train.warmup_epochs is 200.0$"),
        (dict(ema_mode="halflife", ema_decay=None), r"^train.ema_halflife_kimg: None is not valid; expected exactly "
                                                    r"one of train.ema_halflife_kimg and train.ema_halflife_epochs for "
                                                    r"train.ema_mode halflife"),
        (dict(seed=-1, data_order="fixed"), r"^train.seed: -1 is not valid; expected an integer in \[0, 2³²\) for "
                                            r"train.data_order fixed$"),
        (dict(seed=-1, data_order="reshuffle"), r"^train.seed: -1 is not valid; expected an integer ≥ 0$"),
        (dict(precision="fp16"), r"^train.precision: 'fp16' is not valid; expected fp32 or bf16$"),
        (dict(grad_clip=0.0), r"^train.grad_clip: 0.0 is not valid"),
        (dict(eps=-1.0), r"^train.eps: -1.0 is not valid"),
        (dict(device="tpu"), r"^train.device: 'tpu' is not valid; expected auto, cpu, cuda or cuda:N$"),
    ]
    for change, message in cases:
        with pytest.raises(UsageError, match=message):
            train(data16, tmp_path / "r", MODEL, dataclasses.replace(TRAIN, **change))
    with pytest.raises(UsageError, match=r"^model.channels: 3 is not valid; expected an even number ≥ 4$"):
        train(data16, tmp_path / "r", dataclasses.replace(MODEL, channels=3), TRAIN)
    with pytest.raises(UsageError, match=r"^model.channel_mult: \[1, 2, 2, 2, 2\] is not valid; expected at most as "
                                         r"many levels as the data.s 8×8 images can be halved into"):
        train(data16, tmp_path / "r", dataclasses.replace(MODEL, channel_mult=(1, 2, 2, 2, 2)), TRAIN)
    assert not (tmp_path / "r").exists()  # refused before the run directory was made


def test_the_run_directory_is_checked_by_the_shared_rule(data16, tmp_path):
    """A run directory is new, empty or this run's own; anything else is refused in one line before any work (a
    path below a regular file cannot be created: exit 1; a file, or a directory of something else: exit 2)."""
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(UsageError, match=r"^run: '.*other' is not valid; expected a new directory, or a training run "
                                         r"directory to resume \(it holds 1 entry: x.txt\)$"):
        train(data16, tmp_path / "other", MODEL, TRAIN)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"^run: '.*f' is not valid; expected .* \(it is a file\)$"):
        train(data16, tmp_path / "f", MODEL, TRAIN)
    with pytest.raises(RunError, match=r"^run: cannot create '.*f/run': '.*f' is a file, not a directory$"):
        train(data16, tmp_path / "f" / "run", MODEL, TRAIN)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"stage": "dataset", "status": "complete"}))
    with pytest.raises(UsageError, match=r"^run: '.*data' holds a training run of a different config \(stage "
                                         r"'dataset'\)"):
        train(data16, tmp_path / "data", MODEL, TRAIN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f", "other"]


def test_train_locks_the_run_directory_and_removes_stale_temporaries(data16, tmp_path, monkeypatch):
    """The library's train() (not only the command line) holds the run directory's lock while it trains, so a
    second trainer of the same directory is refused, and removes what a killed run was writing there."""
    import fcntl
    import os

    from diffmem.train import loop

    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".state.safetensors.0123456789ab.tmp"
    stale.write_bytes(b"half a state")
    seen = {}

    def spy(*args, **kwargs):  # in place of the training itself: is the lock held, is the temporary gone?
        fd = os.open(run / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen["locked"] = False
        except BlockingIOError:
            seen["locked"] = True
        finally:
            os.close(fd)
        seen["stale"] = stale.exists()
        with pytest.raises(UsageError, match=r"^run: '.*run' is in use by another diffmem process \(pid "):
            train(data16, run, MODEL, TRAIN)  # a second trainer of the same directory, while the first holds it
        return run

    monkeypatch.setattr(loop, "_train_on_device", spy)
    assert train(data16, run, MODEL, TRAIN) == run
    assert seen == {"locked": True, "stale": False}
    # a directory made only for the lock is removed again when the run fails before writing anything into it
    monkeypatch.setattr(loop, "_train_on_device", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        train(data16, tmp_path / "new", MODEL, TRAIN)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(data16, tmp_path):
    """`diffmem train` killed (SIGKILL) mid-run, then the same command again: the same bits as one go."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--data", str(data16), "--preset", "digits", "--channels", "8", "--batch", "8", "--kimg", "0.48",
            "--state-kimg", "0.016", "--snapshot-kimg", "0.08", "--dropout", "0.1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffmem", "train", "--out", str(run), *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "state.safetensors").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert not (run / "final.safetensors").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import argparse

    from diffmem.cli.train import add_arguments, resolve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    model, t = resolve(parser.parse_args(["--out", "-", *args]))
    whole = train(data16, tmp_path / "whole", model, t)  # the same run in one go, in this process
    _assert_same_tensors(_tensors(whole / "final.safetensors"), _tensors(run / "final.safetensors"))
    _assert_same_tensors(_tensors(whole / "state.safetensors"), _tensors(run / "state.safetensors"))
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no half-written files left behind


def test_fp32_training_turns_tf32_off_and_restores_it():
    from diffmem.devices import exact_float32

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_float32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with exact_float32(enabled=False):  # bf16 runs leave the settings alone
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
