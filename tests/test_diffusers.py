"""`diffmem sample --diffusers`: tiny UNet2DModels saved with save_pretrained, sampled and checked against
diffusers' own pipelines, an EDM Euler reference, per-sample seeds, the safety refusals, and a model trained
here to memorize 16 images that `sample → measure` reports as memorizing."""

import json
import sys

import numpy as np
import pytest
import torch

from diffmem.cli import main
from diffmem.io import load_images, load_npz

diffusers = pytest.importorskip("diffusers")


def tiny_unet(num_class_embeds=None, seed=0, channels=1, size=8):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                                 block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    """A randomly initialised unconditional UNet2DModel saved as a DDPM pipeline folder (unet/, scheduler/)."""
    d = tmp_path_factory.mktemp("ddpm")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)) \
        .save_pretrained(d)
    return d


def _sample(args):
    return main(["sample", *[str(a) for a in args]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_seed_same_images_whatever_the_batch(ddpm_dir, tmp_path, capsys, dtype):
    for sched in ("saved", "ddim"):  # DDPM draws noise at every step; DDIM with η = 0 none
        a, b, c = tmp_path / f"a{sched}.npz", tmp_path / f"b{sched}.npz", tmp_path / f"c{sched}.npz"
        base = ["--diffusers", ddpm_dir, "--scheduler", sched, "--steps", 12, "--dtype", dtype]
        assert _sample([*base, "--n", 6, "--seed", 3, "--batch", 6, "--out", a]) == 0
        assert _sample([*base, "--n", 6, "--seed", 3, "--batch", 4, "--out", b]) == 0
        assert _sample([*base, "--n", 4, "--seed", 5, "--batch", 1, "--out", c]) == 0
        sa, sb, sc = load_npz(a), load_npz(b), load_npz(c)
        if dtype == "float64":  # bit-identical whatever the batch
            np.testing.assert_array_equal(sa.images, sb.images)
            np.testing.assert_array_equal(sa.images[2:], sc.images)  # seeds 5..8 alone give the same samples
        else:  # float32 kernels may round differently per batch size: at most one level, on few pixels
            for x, y in ((sa.images, sb.images), (sa.images[2:], sc.images)):
                diff = np.abs(x.astype(int) - y.astype(int))
                assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        assert sa.seeds.tolist() == list(range(3, 9)) and sa.labels.tolist() == [-1] * 6
        assert sa.images.dtype == np.uint8 and sa.images.shape == (6, 1, 8, 8)
        assert len({s.tobytes() for s in sa.images}) == 6  # different seeds, different samples
    out = capsys.readouterr().out
    assert "DDPMScheduler, 12 steps" in out and "DDIMScheduler, 12 steps" in out and "seeds 3..8" in out


@pytest.mark.parametrize("sched", ["ddpm", "ddim"])
def test_matches_diffusers_own_pipeline_with_per_sample_generators(ddpm_dir, sched):
    from diffmem.sample.diffusers import load_diffusers_model, sample_diffusers_seeds

    model = load_diffusers_model(ddpm_dir, sched, "cpu")
    seeds = np.array([11, 12, 13])
    x, labels = sample_diffusers_seeds(model, seeds, 10, eta=0.5 if sched == "ddim" else 0.0)
    pipe_cls = diffusers.DDIMPipeline if sched == "ddim" else diffusers.DDPMPipeline
    pipe = pipe_cls(unet=model.unet, scheduler=model.make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"eta": 0.5} if sched == "ddim" else {}
    want = pipe(batch_size=3, generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
                num_inference_steps=10, output_type="np", **kwargs).images  # (x/2 + 1/2) clamped, N×H×W×C
    got = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert labels is None
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_edm_euler_scheduler_matches_the_euler_method_with_edm_preconditioning(tmp_path):
    from diffmem.sample.diffusers import load_diffusers_model, sample_diffusers_seeds

    unet = tiny_unet(seed=1)
    unet.save_pretrained(tmp_path)  # a model folder with the scheduler config beside it
    diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0).save_pretrained(tmp_path)
    model = load_diffusers_model(tmp_path, "saved", "cpu")
    assert model.scheduler_class == "EDMEulerScheduler" and model.dtype == torch.float32
    assert load_diffusers_model(tmp_path, "saved", "cpu", "float64").dtype == torch.float64
    seeds, steps = np.array([0, 1]), 6
    x, _ = sample_diffusers_seeds(model, seeds, steps)
    # reference (EDM paper, Table 1 and Algorithm 1 without the second-order correction), float64 between calls
    sd, rho, smin, smax = 0.5, 7.0, 0.002, 80.0
    ramp = np.linspace(0, 1, steps)
    sigmas = list((smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho) + [0.0]
    y = torch.cat([torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    y = y.double() * (smax**2 + 1) ** 0.5  # the scheduler's init_noise_sigma
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2) ** 0.5
            c_in, c_noise = 1 / (s**2 + sd**2) ** 0.5, 0.25 * np.log(s)
            F = unet((c_in * y).float(), torch.tensor(c_noise, dtype=torch.float32)).sample.double()
            D = c_skip * y + c_out * F
            y = y + (s_next - s) * (y - D) / s
    np.testing.assert_allclose(x.double().numpy(), y.numpy(), rtol=1e-4, atol=1e-4)


def test_class_conditional_labels_come_from_each_seed(tmp_path, capsys):
    d = tmp_path / "cond"
    diffusers.DDIMPipeline(unet=tiny_unet(num_class_embeds=5), scheduler=diffusers.DDIMScheduler()).save_pretrained(d)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    base = ["--diffusers", d, "--steps", 5, "--dtype", "float64"]
    assert _sample([*base, "--n", 12, "--batch", 12, "--out", a, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["label_dim"] == 5 and summary["scheduler"] == "DDIMScheduler" and summary["steps"] == 5
    assert summary["dtype"] == "float64"
    assert _sample([*base, "--n", 9, "--seed", 3, "--batch", 2, "--out", b]) == 0
    sa, sb = load_npz(a), load_npz(b)
    assert set(sa.labels.tolist()) <= set(range(5)) and len(set(sa.labels.tolist())) > 1
    # sample k's label is drawn by its own generator right after its noise, as diffmem draws its own models'
    want = [torch.randint(5, (1,), generator=_after_noise(s)).item() for s in range(12)]
    assert sa.labels.tolist() == want
    np.testing.assert_array_equal(sa.labels[3:], sb.labels)
    np.testing.assert_array_equal(sa.images[3:], sb.images)
    c = tmp_path / "c.npz"
    assert _sample(["--diffusers", d, "--steps", 5, "--n", 4, "--label", 2, "--out", c]) == 0
    assert load_npz(c).labels.tolist() == [2] * 4
    assert _sample(["--diffusers", d, "--steps", 5, "--n", 4, "--label", 5, "--out", c]) == 2
    assert "--label: 5 is not valid; expected 0..4" in capsys.readouterr().err


def _after_noise(seed):
    g = torch.Generator().manual_seed(seed)
    torch.randn((1, 1, 8, 8), generator=g)
    return g


def test_refusals_are_one_line_exit_2(ddpm_dir, tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    cases = [
        (["--diffusers", "someone/some-model"], "is not a directory; expected a locally saved diffusers model"),
        (["--diffusers", ddpm_dir, "--rho", "5"], "--rho: 5.0 applies to --run and --optimal only"),
        (["--diffusers", ddpm_dir, "--solver", "euler"], "--solver: 'euler' applies to --run and --optimal only"),
        (["--optimal", ddpm_dir, "--scheduler", "ddim"], "--scheduler: applies to --diffusers only"),
        (["--diffusers", ddpm_dir, "--scheduler", "edm-euler"], "cannot sample a model saved with DDPMScheduler"),
        (["--diffusers", ddpm_dir, "--steps", "1001"], "--steps: 1001 is not valid; expected at most the 1000"),
        (["--diffusers", ddpm_dir, "--eta", "0.5"], "--eta: 0.5 applies to the DDIM scheduler only"),
        (["--diffusers", ddpm_dir, "--label", "0"],
         "--label: 0 is not valid; expected no --label (the denoiser is unconditional)"),
    ]
    for extra, text in cases:
        assert main(["sample", "--n", "2", "--out", out, *map(str, extra)]) == 2, extra
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "x.npz").exists()


def test_pickled_weights_and_folder_code_are_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = f"open({str(marker)!r}, 'w').write('x')\n"
    # a pickle that would write the marker when loaded, as the only weights
    bin_dir = tmp_path / "bin"
    tiny_unet().save_pretrained(bin_dir, safe_serialization=False)
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, (evil,))

    payload = pickle.dumps(Boom())
    pickle.loads(payload)  # the payload is live: unpickling it does write the marker
    exec(evil)  # and so does the code planted in the folder below
    assert marker.exists()
    marker.unlink()
    (bin_dir / "diffusion_pytorch_model.bin").write_bytes(payload)
    diffusers.DDPMScheduler().save_pretrained(bin_dir)
    assert main(["sample", "--diffusers", str(bin_dir), "--n", "2", "--out", str(tmp_path / "a.npz")]) == 2
    assert "a pickle), which is never loaded" in capsys.readouterr().err and not marker.exists()
    # a safetensors index that names a pickled shard
    (bin_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv_in.weight": "diffusion_pytorch_model.bin"}}))
    assert main(["sample", "--diffusers", str(bin_dir), "--n", "2", "--out", str(tmp_path / "a.npz")]) == 2
    assert "expected .safetensors files" in capsys.readouterr().err
    # a pipeline folder whose model_index.json names custom code, with that code beside it
    pipe = tmp_path / "pipe"
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "EvilPipeline"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    (pipe / "pipeline.py").write_text(evil)
    (pipe / "unet" / "modeling.py").write_text(evil)
    assert main(["sample", "--diffusers", str(pipe), "--n", "2", "--steps", "3", "--out", str(tmp_path / "b.npz")]) == 0
    assert not marker.exists() and load_npz(tmp_path / "b.npz").images.shape == (2, 1, 8, 8)
    # another model class
    cfg = json.loads((pipe / "unet" / "config.json").read_text())
    (pipe / "unet" / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    assert main(["sample", "--diffusers", str(pipe), "--n", "2", "--out", str(tmp_path / "c.npz")]) == 2
    assert "expected a UNet2DModel" in capsys.readouterr().err


def test_missing_extra_is_one_line_naming_it(ddpm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the [diffusers] extra were not installed
    assert main(["sample", "--diffusers", str(ddpm_dir), "--n", "2", "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--diffusers: needs the diffusers package, which is not installed; install the [diffusers] extra" in err


@pytest.mark.slow
def test_a_diffusers_model_trained_to_memorize_16_images_is_measured_as_memorizing(tmp_path, capsys):
    """Plain diffusers training (no diffmem code): a class-conditional UNet2DModel, one class per image
    (unique labels memorize fastest), 500 steps; then `diffmem sample --diffusers` → `diffmem measure`."""
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images[:16] * 255 / 16).astype(np.uint8)[:, None]
    y = torch.tensor(images, dtype=torch.float32) / 127.5 - 1
    unet = tiny_unet(num_class_embeds=16)
    ema = tiny_unet(num_class_embeds=16)
    ema.load_state_dict(unet.state_dict())
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        idx = torch.randint(16, (64,), generator=g)
        noise = torch.randn((64, 1, 8, 8), generator=g)
        t = torch.randint(1000, (64,), generator=g)
        loss = ((unet(sched.add_noise(y[idx], noise, t), t, class_labels=idx).sample - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 0.01)  # EMA decay 0.99
    diffusers.DDPMPipeline(unet=ema, scheduler=sched).save_pretrained(tmp_path / "model")
    np.savez(tmp_path / "train.npz", images=images)
    gen = tmp_path / "gen.npz"
    assert main(["sample", "--diffusers", str(tmp_path / "model"), "--scheduler", "ddim", "--steps", "20",
                 "--n", "200", "--out", str(gen)]) == 0
    capsys.readouterr()
    assert main(["measure", "--samples", str(gen), "--train", str(tmp_path / "train.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_samples"] == 200 and summary["memorization_ratio"] >= 0.8, summary
    s = load_npz(gen)
    # memorized samples copy the training image of their own class
    table = np.abs(s.images[:, None].astype(int) - images[None].astype(int)).reshape(200, 16, -1).sum(-1)
    assert (table.argmin(1) == s.labels).mean() >= 0.8


def test_png_directory_output_reads_back_as_the_npz(ddpm_dir, tmp_path):
    """--out DIR/ writes the same samples as --out FILE.npz, one PNG per seed, read back with names and seeds."""
    base = ["--diffusers", ddpm_dir, "--scheduler", "ddim", "--steps", 4, "--dtype", "float64", "--n", 3,
            "--seed", 7]
    assert _sample([*base, "--out", tmp_path / "s.npz"]) == 0
    assert _sample([*base, "--out", f"{tmp_path / 'pngs'}/"]) == 0
    ref = load_npz(tmp_path / "s.npz")
    got = load_images(tmp_path / "pngs")
    assert sorted(p.name for p in (tmp_path / "pngs").glob("*.png")) == [f"seed-{s:06d}.png" for s in (7, 8, 9)]
    np.testing.assert_array_equal(got.images, ref.images)
    assert got.seeds.tolist() == [7, 8, 9] and got.names.tolist() == [f"seed-{s:06d}.png" for s in (7, 8, 9)]


def test_a_learned_variance_unet_is_sampled_by_every_scheduler(tmp_path):
    from diffmem.sample.diffusers import load_diffusers_model, sample_diffusers_seeds

    # a UNet with a learned variance (2 channels out for 1 in), saved with DDPM's learned_range variance
    torch.manual_seed(1)
    two = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    d = tmp_path / "learned"
    diffusers.DDPMPipeline(unet=two, scheduler=diffusers.DDPMScheduler(variance_type="learned_range")) \
        .save_pretrained(d)
    # the same network cut to its first output channel: what a scheduler without a learned variance must see
    one = tiny_unet(seed=1)
    state = {k: (v[:1] if k.startswith("conv_out.") else v) for k, v in two.state_dict().items()}
    one.load_state_dict(state)
    e = tmp_path / "first-half"
    diffusers.DDPMPipeline(unet=one, scheduler=diffusers.DDPMScheduler()).save_pretrained(e)
    seeds = np.array([4, 5])
    saved = load_diffusers_model(d, "saved", "cpu")  # DDPM splits the output itself and uses the variance
    assert not saved.variance_channels_dropped
    x, _ = sample_diffusers_seeds(saved, seeds, 6)
    pipe = diffusers.DDPMPipeline(unet=saved.unet, scheduler=saved.make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    want = pipe(batch_size=2, generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
                num_inference_steps=6, output_type="np").images
    np.testing.assert_allclose((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), want, rtol=0, atol=1e-6)
    m = load_diffusers_model(d, "ddim", "cpu")  # DDIM has no variance to learn: it gets the first half
    assert m.variance_channels_dropped
    got, _ = sample_diffusers_seeds(m, seeds, 6, eta=0.5)
    ref, _ = sample_diffusers_seeds(load_diffusers_model(e, "ddim", "cpu"), seeds, 6, eta=0.5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)  # exactly the cut network's samples
