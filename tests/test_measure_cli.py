"""`diffmem measure` and the measurement artefact: JSON contract, files written, one-line errors."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from diffmem.cli import main
from diffmem.errors import UsageError
from diffmem.io import ImageSet, load_npz, save_image_set
from diffmem.measure import measure, outputs, write_measurement
from diffmem.measure.outputs import grid_rows

KEYS = {"memorization_ratio", "ci_low", "ci_high", "n_samples", "n_memorized", "n_train", "threshold",
        "duplicate_groups"}


@pytest.fixture
def files(tmp_path, rng):
    train = rng.integers(0, 256, size=(200, 1, 8, 8), dtype=np.uint8)
    train[150] = train[3]
    samples = np.concatenate([train[:60], rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)])
    save_image_set(tmp_path / "train.npz", ImageSet(train))
    save_image_set(tmp_path / "samples.npz", ImageSet(samples, seeds=np.arange(7, 107)))
    return tmp_path / "samples.npz", tmp_path / "train.npz"


def test_json_is_one_object_with_the_named_keys(files, capsys):
    s, t = files
    assert main(["measure", "--samples", str(s), "--train", str(t), "--threshold", "1/4", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    d = json.loads(out)
    assert KEYS <= set(d)
    assert (d["n_samples"], d["n_memorized"], d["n_train"], d["duplicate_groups"]) == (100, 60, 200, 1)
    assert d["memorization_ratio"] == 0.6 and d["threshold"] == 0.25
    ref = binomtest(60, 100).proportion_ci(confidence_level=0.95, method="wilson")  # an independent Wilson interval
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_terminal_summary_names_every_number(files, capsys):
    s, t = files
    assert main(["measure", "--samples", str(s), "--train", str(t)]) == 0
    out = capsys.readouterr().out
    assert "memorization ratio:  0.6000" in out and "95% Wilson interval" in out
    assert "60 of 100" in out and "threshold 0.3333" in out and "200 (199 distinct; 1 duplicate groups" in out


def test_out_dir_holds_summary_table_and_figures(files, tmp_path, capsys):
    s, t = files
    out = tmp_path / "m"
    assert main(["measure", "--samples", str(s), "--train", str(t), "--out", str(out), "--json"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["copies.csv", "copies.png", "grid.png", "manifest.json",
                                                    "ratios.png", "summary.json", "table.csv", "table.npz"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_memorized"] == 60 and summary["inputs"]["samples"] == str(s)
    with np.load(out / "table.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["seeds"], np.arange(7, 107))
        np.testing.assert_array_equal(z["nn1"][:60], np.arange(60))
        assert z["memorized"].sum() == 60 and z["d1"][:60].max() == 0.0
    assert json.loads((out / "manifest.json").read_text())["stage"] == "measurement"
    # a second run refuses to overwrite, with one line and exit code 2
    assert main(["measure", "--samples", str(s), "--train", str(t), "--out", str(out)]) == 2
    assert f"--out: {str(out)!r} is not valid; expected a new or empty directory (it holds a 'measurement' artefact)" \
        in capsys.readouterr().err


def test_write_measurement_is_atomic_and_grid_rows_are_distinct(files, tmp_path, monkeypatch):
    s, t = files
    samples, train = load_npz(s), load_npz(t)
    m = measure(samples, train)
    rows = grid_rows(m)
    assert len({i for _, i in rows}) == len(rows) == 12
    assert m.ratio[rows[0][1]] == 0.0 and m.ratio[rows[8][1]] == m.ratio.max()  # most, least memorized
    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "plot_grid", broken)
    with pytest.raises(RuntimeError):  # a failure while writing leaves nothing behind
        write_measurement(m, tmp_path / "x", samples=samples, train=train)
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".x.") for p in tmp_path.iterdir())


def test_a_measurement_without_figures_draws_the_same_grid_later(files, tmp_path):
    """Sweeps write measurements without figures; the grid drawn afterwards from the table, the samples and the
    training images is the figure the measurement would have drawn itself, byte for byte."""
    s, t = files
    samples, train = load_npz(s), load_npz(t)
    m = measure(samples, train)
    write_measurement(m, tmp_path / "with", samples=samples, train=train)
    write_measurement(m, tmp_path / "without", samples=samples, train=train, figures=False)
    assert not any(p.suffix == ".png" for p in (tmp_path / "without").iterdir())
    outputs.plot_grid_from(tmp_path / "without", samples, train, tmp_path / "later.png")
    assert (tmp_path / "later.png").read_bytes() == (tmp_path / "with" / "grid.png").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--threshold", "abc"], "--threshold: 'abc' is not valid"),
    (["--threshold", "2"], "--threshold: 2.0 is not valid"),
    (["--candidates", "1"], "--candidates: 1 is not valid"),
])
def test_bad_options_are_one_line_exit_2(files, capsys, args, message):
    s, t = files
    assert main(["measure", "--samples", str(s), "--train", str(t), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_shape_mismatch_and_single_image_exit_2(tmp_path, rng, capsys):
    save_image_set(tmp_path / "rgb.npz", ImageSet(rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)))
    save_image_set(tmp_path / "gray.npz", ImageSet(rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)))
    save_image_set(tmp_path / "one.npz", ImageSet(rng.integers(0, 256, (1, 1, 8, 8), dtype=np.uint8)))
    code = main(["measure", "--samples", str(tmp_path / "rgb.npz"), "--train", str(tmp_path / "gray.npz")])
    r = capsys.readouterr()
    assert code == 2 and r.out == ""
    assert r.err.strip().count("\n") == 0 and "3×8×8 (C×H×W) but --train images are 1×8×8" in r.err
    assert "add --channels 1" in r.err
    with pytest.raises(UsageError, match="at least two distinct training images"):
        measure(load_npz(tmp_path / "gray.npz"), load_npz(tmp_path / "one.npz"))


def test_image_folder_input(tmp_path, rng, capsys):
    from PIL import Image

    train = rng.integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
    (tmp_path / "gen").mkdir()
    for i in (2, 4):
        Image.fromarray(train[i].transpose(1, 2, 0)).save(tmp_path / "gen" / f"{i}.png")
    save_image_set(tmp_path / "train.npz", ImageSet(train))
    assert main(["measure", "--samples", str(tmp_path / "gen"), "--train", str(tmp_path / "train.npz"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["n_samples"], d["n_memorized"]) == (2, 2) and d["warning"].startswith("only 2 samples")


def test_feature_measurement_writes_no_grid(tmp_path, rng):
    feats = rng.normal(size=(50, 16))
    m = measure(feats[:10] + 1e-3, feats)
    out = write_measurement(m, tmp_path / "f", samples=feats[:10], train=feats)
    assert sorted(p.name for p in out.iterdir()) == ["copies.csv", "manifest.json", "ratios.png", "summary.json",
                                                    "table.csv", "table.npz"]
    np.testing.assert_array_equal(np.load(out / "table.npz")["nn1"], np.arange(10))
