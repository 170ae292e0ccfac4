"""The fast training path against the plain one: flat Adam and EMA against torch's per-tensor versions bit for
bit; the FLOP estimate and the thread rule; sweep jobs that sample several snapshots at once; compile fallback."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffmem.config import ModelConfig, TrainConfig
from diffmem.io import ImageSet, save_image_set
from diffmem.nn import build_denoiser
from diffmem.runtime import intra_op_threads, tune_allocator
from diffmem.train import train
from diffmem.train.ema import EMAUpdater, make_ema
from diffmem.train.flat import FlatAdam, FlatEMA, backs, flatten_parameters
from diffmem.train.step import step_gflop, step_threads

MODEL = ModelConfig(resolution=8, in_channels=1, channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(),
                    dropout=0.0, precond="edm")
TRAIN = TrainConfig(kimg=0.064, batch=16, batch_per_device=8, lr=2e-3, warmup_kimg=0.02, warmup_epochs=None,
                    ema_mode="constant", ema_decay=0.9, ema_halflife_epochs=None, snapshot_kimg=0.032,
                    log_kimg=0.016, device="cpu")


def _random_grads(params, g):
    return [torch.randn(p.shape, generator=g) * 0.01 for p in params]


def _model_pair():
    torch.manual_seed(0)
    a = build_denoiser(MODEL)
    b = build_denoiser(MODEL)
    b.load_state_dict(a.state_dict())
    return a, b


def test_flatten_parameters_keeps_values_and_outputs():
    a, b = _model_pair()
    flat = flatten_parameters(b)
    assert flat.numel() == sum(p.numel() for p in a.parameters())
    assert backs(flat, list(b.parameters()))
    x, s = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    assert torch.equal(a(x, s), b(x, s))
    with torch.no_grad():
        flat.add_(1.0)  # the parameters are views: they move with the buffer
    assert torch.equal(next(b.parameters()), next(a.parameters()) + 1.0)
    b.load_state_dict(a.state_dict())  # an in-place load keeps the views
    assert backs(flat, list(b.parameters())) and torch.equal(a(x, s), b(x, s))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_flat_adam_is_torch_adam_bit_for_bit(weight_decay):
    a, b = _model_pair()
    pa, pb = list(a.parameters()), list(b.parameters())
    ref = torch.optim.Adam(pa, lr=2e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=weight_decay)
    fast = FlatAdam(pb, flatten_parameters(b), lr=2e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        grads = _random_grads(pa, g)
        lr = 2e-3 * min(1.0, (step + 1) / 5)  # a warm-up changes the rate between steps
        for opt in (ref, fast):
            for group in opt.param_groups:
                group["lr"] = lr
        for p, gr in zip(pa, grads):
            p.grad = gr.clone()
        for p, gr in zip(pb, grads):
            p.grad = gr.clone()
        ref.step()
        fast.step()
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    sa, sb = ref.state_dict()["state"], fast.state_dict()["state"]
    assert sorted(sa) == sorted(sb) == list(range(len(pa)))
    for i in sa:
        assert set(sa[i]) == set(sb[i]) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])

    # states cross over both ways and the runs continue identically
    c, d = _model_pair()
    c.load_state_dict(a.state_dict())
    d.load_state_dict(a.state_dict())
    ref2 = torch.optim.Adam(c.parameters(), lr=2e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=weight_decay)
    ref2.load_state_dict(fast.state_dict())
    fast2 = FlatAdam(list(d.parameters()), flatten_parameters(d), lr=2e-3, betas=(0.9, 0.99), eps=1e-7,
                     weight_decay=weight_decay)
    fast2.load_state_dict(ref.state_dict())
    grads = _random_grads(pa, g)
    for model, opt in ((a, ref), (b, fast), (c, ref2), (d, fast2)):
        for p, gr in zip(model.parameters(), grads):
            p.grad = gr.clone()
        opt.step()
    for other in (b, c, d):
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), other.parameters()))


def test_flat_adam_refuses_a_missing_gradient():
    _, b = _model_pair()
    opt = FlatAdam(list(b.parameters()), flatten_parameters(b), lr=1e-3)
    with pytest.raises(RuntimeError, match="parameter 0 has no gradient"):
        opt.step()


def test_flat_ema_is_the_per_tensor_update_bit_for_bit():
    a, b = _model_pair()
    ema_a, ema_b = make_ema(a), make_ema(b)
    flat_b, ema_flat = flatten_parameters(b), flatten_parameters(ema_b)
    ref, fast = EMAUpdater(ema_a, a), FlatEMA(ema_b, ema_flat, b, flat_b)
    g = torch.Generator().manual_seed(2)
    for beta in (0.0, 0.5, 0.9, 0.999):
        with torch.no_grad():
            for pa, pb in zip(a.parameters(), b.parameters()):
                pa.add_(torch.randn(pa.shape, generator=g))
                pb.copy_(pa)
        ref(beta)
        fast(beta)
        assert all(torch.equal(x, y) for x, y in zip(ema_a.parameters(), ema_b.parameters()))


def test_step_gflop_matches_the_counted_training_step():
    """The estimate (3 × one image's forward × batch) against torch's count of a real forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffmem.config import MODEL_PRESETS
    from diffmem.train.losses import per_sample_loss

    m = dataclasses.replace(MODEL_PRESETS["digits"], resolution=8, in_channels=1)
    D = build_denoiser(m).train()
    y, n = torch.rand(64, 1, 8, 8) * 2 - 1, torch.randn(64, 1, 8, 8)
    with FlopCounterMode(display=False) as counter:
        per_sample_loss(D, y, torch.full((64,), 0.5, dtype=torch.float64), n, None, m).mean().backward()
    counted = counter.get_total_flops() / 1e9
    assert 1.0 < counted < 3.0  # the digits model: ~1.7 GFLOP per step of 64 images
    assert step_gflop(D, m, 64) == pytest.approx(counted, rel=0.1)
    assert D.training  # counted in eval mode, given back in training mode


def test_step_threads():
    assert step_threads(None, 1.7, 8) == 1  # a small step: one intra-op thread
    assert step_threads(None, 500.0, 8) == 8  # a large one: every thread
    assert step_threads(3, 1.7, 8) == 3  # asked for: as asked


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("data") / "d.npz"
    save_image_set(p, ImageSet(images=rng.integers(0, 256, (24, 1, 8, 8), dtype=np.uint8)))
    return p


@pytest.mark.slow
def test_small_training_runs_on_one_thread_whatever_the_callers_setting(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="diffmem.train.loop")
    with intra_op_threads(1):
        one = train(data, tmp_path / "one", MODEL, TRAIN)
    with intra_op_threads(2):
        auto = train(data, tmp_path / "auto", MODEL, TRAIN)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    assert caplog.text.count("training on 1 intra-op thread(s)") == 2
    for name in ("final.safetensors", "state.safetensors"):  # hence the same bits
        a, b = load_file(str(one / name)), load_file(str(auto / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with intra_op_threads(1):
        train(data, tmp_path / "two", MODEL, TRAIN, threads=2)
        assert torch.get_num_threads() == 1
    assert "training on 2 intra-op thread(s)" in caplog.text


def test_tune_allocator_is_idempotent():
    first = tune_allocator()
    assert isinstance(first, bool) and tune_allocator() is first


@pytest.mark.slow
def test_job_samples_snapshots_at_once_with_the_same_results_and_shares_the_optimum(tmp_path, caplog):
    """A sweep job on two threads (snapshots sampled at once) gives the rows and samples of one on one thread;
    a second job on the same subset copies the optimum's measurement, which equals a fresh one."""
    from diffmem.data import load_dataset
    from diffmem.measure import measure
    from diffmem.sample import OptimalDenoiser, generate
    from diffmem.sweep.emm import job_spec
    from diffmem.sweep.jobs import run_job
    from test_emm_e2e import TINY

    caplog.set_level(logging.INFO, logger="diffmem.sweep.jobs")
    spec = job_spec(TINY, 16, 0)
    with intra_op_threads(1):
        one = run_job(spec, tmp_path / "one" / spec.dirname)
    with intra_op_threads(2):
        two = run_job(spec, tmp_path / "two" / spec.dirname)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "job"} for r in rows]  # noqa: E731
    assert strip(one) == strip(two) and [r["kind"] for r in one] == ["optimal", "train", "train"]
    for kimg in ("000000.320", "000000.640"):
        a = np.load(tmp_path / "one" / spec.dirname / "snapshots" / kimg / "samples.npz", allow_pickle=False)
        b = np.load(tmp_path / "two" / spec.dirname / "snapshots" / kimg / "samples.npz", allow_pickle=False)
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["seeds"], b["seeds"])
    assert "copied from" not in caplog.text

    wider = job_spec(dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, channels=4)), 16, 0)
    with intra_op_threads(1):
        rows = run_job(wider, tmp_path / "one" / wider.dirname)
    assert f"copied from {spec.dirname}" in caplog.text
    train_set, _ = load_dataset(tmp_path / "one" / wider.dirname / "dataset")
    fresh = measure(generate(OptimalDenoiser(train_set.images), TINY.n_samples, TINY.sample_seed, TINY.sample),
                    train_set, TINY.measure).summary
    assert rows[0]["kind"] == "optimal" and rows[0]["n_memorized"] == fresh["n_memorized"] == TINY.n_samples


def test_compile_without_a_cpp_compiler_trains_eagerly_with_one_warning(data, tmp_path, caplog, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    t = dataclasses.replace(TRAIN, kimg=0.032, snapshot_kimg=None)
    with caplog.at_level(logging.WARNING, logger="diffmem.train.step"):
        compiled = train(data, tmp_path / "c", MODEL, dataclasses.replace(t, compile=True))
    eager = train(data, tmp_path / "e", MODEL, t)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["train.compile: no C++ compiler for torch.compile on the CPU (no C++ compiler found); "
                        "training eagerly"]
    a, b = load_file(str(compiled / "final.safetensors")), load_file(str(eager / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["reshuffle", "fixed"])
@pytest.mark.parametrize(("n", "batch"), [(10, 4), (10, 10), (7, 64), (1797, 64), (128, 64)])
def test_data_order_is_the_epoch_permutation_stream(n, batch, kind):
    """Step s's indices are positions s·B … (s+1)·B − 1 of the stream of epoch orders — a permutation per epoch
    from (seed, epoch), or the seed's one permutation every epoch (the reference's sampler) — within an epoch
    and across epoch boundaries alike."""
    from diffmem.train.dataset import DataOrder

    seed, steps = 3, 40
    epochs = steps * batch // n + 2
    if kind == "reshuffle":
        perms = [np.random.default_rng(np.random.SeedSequence([seed, 1, e])).permutation(n) for e in range(epochs)]
    else:
        perms = [np.random.RandomState(seed).permutation(n)] * epochs
    stream = np.concatenate(perms)
    order = DataOrder(n, batch, seed, kind)
    for s in range(steps):
        got = order.indices(s)
        assert got.dtype == np.int64 and np.array_equal(got, stream[s * batch:(s + 1) * batch]), s
