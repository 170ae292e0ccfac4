"""The dataset artefact (round-trip, reuse) and `diffmem data`, including every bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from diffmem.artefacts import array_hash, is_complete, read_manifest
from diffmem.cli import main
from diffmem.config import DataConfig
from diffmem.data import build_dataset, load_dataset, make_dataset
from diffmem.data.digits import load_digits
from diffmem.errors import UsageError
from test_data_sources import exec_payload, write_cifar_binary, write_cifar_python, write_edm_zip


def test_round_trip_and_reuse(tmp_path):
    cfg = DataConfig(size=40, labels="true", seed=7)
    out = build_dataset(cfg, tmp_path / "ds")
    built = make_dataset(cfg)
    s, k = load_dataset(out)
    assert k == 10 and np.array_equal(s.images, built.images) and np.array_equal(s.labels, built.labels)
    assert np.array_equal(s.source_ids, built.source_ids) and s.images.dtype == np.uint8
    assert np.array_equal(s.images, load_digits().images[s.source_ids])
    m = read_manifest(out)
    assert m["stage"] == "dataset" and m["label_classes"] == 10 and m["hashes"]["images"] == array_hash(s.images)
    assert is_complete(out, "dataset", cfg)
    with np.load(out / "dataset.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["images", "labels", "names", "origin", "source_ids"]
        assert z["labels"].dtype == np.int64 and z["names"].dtype.kind == "U"
        assert list(z["names"]) == [f"digits:{i}" for i in s.source_ids]  # named by the index in the source
    before = (out / "dataset.npz").stat().st_mtime_ns
    assert build_dataset(cfg, out) == out and (out / "dataset.npz").stat().st_mtime_ns == before  # reused
    with pytest.raises(UsageError, match=r"or one holding the dataset artefact of this config \(it holds a 'dataset' "
                                         r"artefact\)"):  # of another config
        build_dataset(DataConfig(size=41), out)
    from diffmem.artefacts import write_manifest

    write_manifest(tmp_path / "half", "dataset", cfg, status="running")
    with pytest.raises(UsageError, match="expected a complete dataset artefact"):
        load_dataset(tmp_path / "half")
    # a bare .npz (no manifest): label_classes from the labels
    s2, k2 = load_dataset(out / "dataset.npz")
    assert k2 == int(s.labels.max()) + 1 and np.array_equal(s2.images, s.images)


def test_cifar_zip_and_folder_through_the_builder(tmp_path):
    write_cifar_binary(tmp_path / "bin.tar.gz")
    d = make_dataset(DataConfig(source=f"cifar10:{tmp_path / 'bin.tar.gz'}", size=20, resolution=16,
                                labels="true"))
    assert d.images.shape == (20, 3, 16, 16) and d.info["label_classes"] == 10
    assert np.bincount(d.labels, minlength=10).tolist() == [2] * 10
    imgs = np.random.default_rng(0).integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    write_edm_zip(tmp_path / "a.zip", imgs, np.arange(12) % 3)
    z = make_dataset(DataConfig(source=f"zip:{tmp_path / 'a.zip'}", size=6, labels="true", resolution=4,
                                resample="lanczos"))
    assert z.images.shape == (6, 1, 4, 4) and np.bincount(z.labels).tolist() == [2, 2, 2]
    from PIL import Image

    for i in range(6):
        (tmp_path / "tree" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i, 0]).save(tmp_path / "tree" / f"c{i % 2}" / f"{i}.png")
    f = make_dataset(DataConfig(source=f"folder:{tmp_path / 'tree'}", size=4, labels="true"))
    assert np.bincount(f.labels).tolist() == [2, 2] and f.info["class_names"] == ["c0", "c1"]
    src_of = {0: [0, 2, 4], 1: [1, 3, 5]}  # folder order: c0/0, c0/2, c0/4, c1/1, c1/3, c1/5
    for img, lab, sid in zip(f.images, f.labels, f.source_ids):
        assert np.array_equal(img[0], imgs[src_of[lab][sid - 3 * lab], 0])


def run_cli(args, capsys):
    rc = main(["data", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_summary_and_json(tmp_path, capsys):
    rc, out, err = run_cli(["--source", "digits", "--size", "64", "--out", str(tmp_path / "a")], capsys)
    assert rc == 0 and "64 images of 1×8×8" in out and "images per class 6–7" in out
    assert "duplicates: 0 images with an exact copy" in out and "RMS pixel distance ≤ 2" in out
    rc, out, _ = run_cli(["--source", "digits", "--size", "64", "--out", str(tmp_path / "a"), "--json"], capsys)
    j = json.loads(out)
    assert rc == 0 and j["reused"] is True and j["n_images"] == 64 and j["label_classes"] == 0
    assert j["duplicates"]["exact"]["images"] == 0


def test_cli_as_a_program(tmp_path):
    out = subprocess.run([sys.executable, "-m", "diffmem", "data", "--source", "digits", "--size", "64", "--seed",
                          "0", "--out", str(tmp_path / "d"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout)
    s, k = load_dataset(tmp_path / "d")
    assert j["n_images"] == len(s) == 64 and k == 0
    c = np.bincount(load_digits().labels[s.source_ids], minlength=10)
    assert c.max() - c.min() <= 1


def _bad_inputs(tmp):
    """(arguments, text the one error line must contain) for every bad input of the issue."""
    from PIL import Image

    write_cifar_python(tmp / "ok.tar.gz")
    raw = (tmp / "ok.tar.gz").read_bytes()
    (tmp / "trunc.tar.gz").write_bytes(raw[: len(raw) // 2])
    (tmp / "junk.tar.gz").write_bytes(b"not an archive at all" * 50)
    write_cifar_python(tmp / "evil.tar.gz", batch1=exec_payload(tmp / "marker"))
    np.savez(tmp / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    (tmp / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp / "flat" / "a.png")
    write_edm_zip(tmp / "esc.zip", np.zeros((1, 1, 4, 4), np.uint8), None, extra={"../x.png": b"x"})
    (tmp / "bad.zip").write_bytes(b"PK\x03\x04 broken")
    return [
        (["--source", "imagenet"], "--source: 'imagenet' is not a known source"),
        (["--source", f"cifar10:{tmp / 'missing.tar.gz'}"], "does not exist"),
        (["--source", f"cifar10:{tmp / 'trunc.tar.gz'}"], "not a readable CIFAR-10 archive"),
        (["--source", f"cifar10:{tmp / 'junk.tar.gz'}"], "not a readable CIFAR-10 archive"),
        (["--source", f"cifar10:{tmp / 'evil.tar.gz'}"], "builtins.exec' is refused"),
        (["--source", f"zip:{tmp / 'esc.zip'}"], "escapes the archive"),
        (["--source", f"zip:{tmp / 'bad.zip'}"], "not a readable zip"),
        (["--source", f"npz:{tmp / 'obj.npz'}"], "object arrays"),
        (["--source", "digits", "--size", "5000"], "--size: 5000 is more than --source 'digits' can give (1797"),
        (["--source", "digits", "--classes", "11"], "--classes: 11 is more than the 10 classes"),
        (["--source", f"folder:{tmp / 'flat'}", "--labels", "true"], "--labels: 'true' needs a labeled source"),
        (["--source", f"folder:{tmp / 'flat'}", "--classes", "2"], "--classes: 2 needs a labeled source"),
        (["--source", "digits", "--resolution", "16"], "--resolution: 16 is larger than the source's 8×8"),
        (["--source", "digits", "--labels", "random"], "--label-classes: None is not valid"),
        (["--source", "digits", "--label-classes", "3"], "--label-classes: 3 is not valid; expected null: it is only "
                                                         "used with --labels random (not none)"),
        (["--source", "digits", "--mix-rate", "0.5"], "--mix-rate: 0.5 is not valid; expected 0 without a second "
                                                      "source (--mix)"),
        (["--source", "digits", "--mix", "digits", "--mix-rate", "1.5"], "--mix-rate: 1.5 is not valid"),
        (["--source", "digits", "--mix", "shapes:res=8", "--mix-rate", "0.5"], "--mix: 'shapes:res=8' has 3 channels"),
        (["--source", "digits", "--mix", "digits"], "--mix-rate: 0.0 is not valid"),
        (["--source", "digits", "--size", "0"], "--size: 0 is not valid"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    outs = tmp_path / "outs"
    for i, (args, expected) in enumerate(_bad_inputs(inputs)):
        rc, out, err = run_cli([*args, "--out", str(outs / f"o{i}")], capsys)
        assert rc == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert expected in err, (expected, err)
        assert out == ""
        assert not outs.exists() or list(outs.iterdir()) == [], list(outs.iterdir())
    assert not (inputs / "marker").exists()
