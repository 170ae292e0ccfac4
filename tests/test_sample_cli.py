"""`diffmem sample`: the written file, --json, per-sample seeds through the CLI, and its error lines."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffmem.cli import main
from diffmem.config import MODEL_PRESETS, DataConfig
from diffmem.data import build_dataset, load_dataset
from diffmem.io import load_npz
from diffmem.nn import build_denoiser
from diffmem.train.checkpoints import save_denoiser


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images[:64] * 255 / 16).astype(np.uint8)[:, None]
    path = tmp_path_factory.mktemp("data") / "digits64.npz"
    np.savez(path, images=images)
    return path, images


def _copies(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Index of the training image each sample equals exactly (−1 when none)."""
    eq = np.all(samples.reshape(len(samples), 1, -1) == train.reshape(1, len(train), -1), axis=2)
    return np.where(eq.any(1), eq.argmax(1), -1)


def test_sample_optimal_writes_uint8_images_labels_seeds(digits_npz, tmp_path, capsys):
    path, images = digits_npz
    out = tmp_path / "gen" / "s.npz"
    assert main(["sample", "--optimal", str(path), "--n", "30", "--seed", "5", "--batch", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 30 samples" in text and "seeds 5..34" in text and "35 denoiser evaluations" in text
    s = load_npz(out)
    assert s.images.dtype == np.uint8 and s.images.shape == (30, 1, 8, 8)
    assert s.labels.tolist() == [-1] * 30 and s.seeds.tolist() == list(range(5, 35))
    assert (_copies(s.images, images) >= 0).all()  # the optimum copies training images
    # the same seeds in one batch, started one seed earlier: identical samples
    out2 = tmp_path / "t.npz"
    assert main(["sample", "--optimal", str(path), "--n", "31", "--seed", "4", "--out", str(out2), "--json"]) == 0
    assert np.array_equal(load_npz(out2).images[1:], s.images)
    summary = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert summary["n_samples"] == 31 and summary["seed_first"] == 4 and summary["steps"] == 18


def test_sample_optimal_of_a_labelled_dataset_is_conditional(tmp_path, capsys):
    d = build_dataset(DataConfig(source="digits", size=50, labels="true"), tmp_path / "ds")
    train, classes = load_dataset(d)
    out = tmp_path / "c.npz"
    assert main(["sample", "--optimal", str(d), "--n", "20", "--label", "3", "--out", str(out)]) == 0
    s = load_npz(out)
    assert classes == 10 and s.labels.tolist() == [3] * 20
    idx = _copies(s.images, train.images)
    assert (idx >= 0).all() and (train.labels[idx] == 3).all()


def test_sample_run_checkpoint_is_batch_invariant(tmp_path):
    cfg = dataclasses.replace(MODEL_PRESETS["digits"], channels=8, label_dim=4)
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    for p in model.parameters():  # an untrained but not trivially zero network
        p.data.add_(0.05 * torch.randn_like(p))
    save_denoiser(tmp_path / "m.safetensors", model, cfg)
    outs = []
    for batch in ("3", "10"):
        out = tmp_path / f"b{batch}.npz"
        assert main(["sample", "--run", str(tmp_path / "m.safetensors"), "--n", "10", "--steps", "6",
                     "--batch", batch, "--out", str(out)]) == 0
        outs.append(load_npz(out))
    assert outs[0].images.shape == (10, 1, 8, 8)
    assert np.array_equal(outs[0].labels, outs[1].labels) and set(outs[0].labels.tolist()) <= {0, 1, 2, 3}
    assert np.abs(outs[0].images.astype(int) - outs[1].images.astype(int)).max() <= 1  # float32 net: ≤ 1 level
    assert len(np.unique(outs[0].images.reshape(10, -1), axis=0)) == 10


@pytest.mark.parametrize("extra, match", [
    (["--n", "0"], "--n: 0 is not valid"),
    (["--n", "2", "--steps", "0"], "--steps: 0 is not valid"),
    (["--n", "2", "--churn", "-1"], "--churn: -1.0 is not valid"),
    (["--n", "2", "--label", "1"], "--label: 1 is not valid; expected no --label (the denoiser is unconditional)"),
    (["--n", "2", "--snapshot", "5"], "--snapshot: 5 given without --run"),
    (["--n", "2", "--seed", "-3"], "--seed: -3 is not valid"),
])
def test_sample_errors_are_one_line_exit_2_and_write_nothing(digits_npz, tmp_path, capsys, extra, match):
    path, _ = digits_npz
    out = tmp_path / "x.npz"
    assert main(["sample", "--optimal", str(path), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_sample_bad_paths_are_usage_errors(digits_npz, tmp_path, capsys):
    path, _ = digits_npz
    assert main(["sample", "--optimal", str(tmp_path / "none"), "--n", "2", "--out", str(tmp_path / "x.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["sample", "--optimal", str(path), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --run and --optimal together
        main(["sample", "--optimal", str(path), "--run", "r", "--n", "2", "--out", str(tmp_path / "x.npz")])
    assert e.value.code == 2


def test_sample_to_a_directory_of_pngs_named_by_seed(digits_npz, tmp_path, capsys):
    import csv

    from PIL import Image

    path, images = digits_npz
    out = tmp_path / "pngs"
    assert main(["sample", "--optimal", str(path), "--n", "12", "--seed", "3", "--steps", "6",
                 "--out", f"{out}/"]) == 0
    assert "as PNG files seed-000003.png … seed-000014.png" in capsys.readouterr().out
    names = [f"seed-{s:06d}.png" for s in range(3, 15)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["manifest.json"])
    assert main(["sample", "--optimal", str(path), "--n", "12", "--seed", "3", "--steps", "6",
                 "--out", str(tmp_path / "same.npz")]) == 0
    ref = load_npz(tmp_path / "same.npz")
    for name, img in zip(names, ref.images):  # each file decodes (as an image tool reads it) to the sample
        with Image.open(out / name) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), img[0])
    # measure reads the directory back with names and seeds
    assert main(["measure", "--samples", str(out), "--train", str(path), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    with open(tmp_path / "m" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["sample_name"] for r in rows] == names and [r["seed"] for r in rows] == [str(s) for s in range(3, 15)]
    assert all(r["memorized"] == "true" for r in rows)  # the optimum copies training images
    # refusals before any sampling: a non-empty directory, a file name that is neither .npz nor a directory
    for bad, msg in ((f"{out}/", "expected a new or empty directory for one PNG per sample (it holds a 'samples' "
                                 "artefact)"), (str(tmp_path / "x.png"), "ending in .npz")):
        assert main(["sample", "--optimal", str(path), "--n", "2", "--out", bad]) == 2
        assert msg in capsys.readouterr().err
