"""Files never execute code: planted pickle payloads (which would write a marker file) in checkpoints,
training states, .npz arrays and CIFAR-10 archives are refused with one clear line, and the marker never
appears. Archives whose members escape, and folders with symlink loops, touch nothing outside.

The restricted CIFAR-10 unpickler and zip member names are also tested at the library level in
test_data_sources.py (test_cifar10_payload_is_refused_and_never_runs,
test_restricted_unpickler_refuses_non_numeric_arrays, test_zip_member_names_that_escape_are_refused).
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from diffmem.cli import main
from diffmem.io import ImageSet, save_image_set
from test_data_sources import exec_payload, png_bytes, write_cifar_python, write_edm_zip


class Payload:
    """Unpickling this object runs code that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "good.npz"
    save_image_set(p, ImageSet(images=rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8)))
    return p


def _refused(argv, capsys, marker, *needles):
    """Run the CLI: exit 2, one line on stderr holding every needle, no traceback, and no payload ran."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    assert not marker.exists(), "the payload ran"
    return err


def test_payloads_do_run_when_unpickled(tmp_path):
    """The planted payloads are live: unpickled without restriction they create the marker."""
    marker = tmp_path / "proof"
    buf = io.BytesIO()
    torch.save({"w": Payload(marker)}, buf)
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=pickle.dumps(Payload(marker)), check=True)
    assert marker.read_text() == "ran"
    marker.unlink()
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert marker.read_text() == "ran"


def _safetensors_header(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


@pytest.mark.parametrize("kind", ["pickle.pkl", "torch.pt", "pickle.safetensors", "torch.safetensors",
                                  "huge-header.safetensors", "not-json.safetensors", "beyond-end.safetensors"])
def test_checkpoint_files_never_run_code(kind, tmp_path, capsys):
    marker = tmp_path / "marker"
    name = kind.split(".")[0]
    path = tmp_path / f"evil.{kind.split('.')[1]}"
    if name == "pickle":
        path.write_bytes(pickle.dumps({"w": Payload(marker)}))
    elif name == "torch":
        torch.save({"w": Payload(marker)}, path)
    elif name == "huge-header":
        path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif name == "not-json":
        path.write_bytes(_safetensors_header(b"{not json" + b" " * 7))
    else:
        header = b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
        path.write_bytes(_safetensors_header(header, b"\0" * 8))
    out = tmp_path / "s.npz"
    _refused(["sample", "--run", str(path), "--n", "2", "--steps", "2", "--out", str(out)], capsys, marker, str(path))
    assert not out.exists()
    # the same file as the final weights of a run directory
    run = tmp_path / "run"
    run.mkdir()
    (run / "final.safetensors").write_bytes(path.read_bytes())
    _refused(["sample", "--run", str(run), "--n", "2", "--steps", "2", "--out", str(out)], capsys, marker,
             "final.safetensors")
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_training_state_crafted_as_a_pickle_never_runs(fmt, good, tmp_path, capsys):
    from diffmem.config import ModelConfig, TrainConfig
    from diffmem.train import train

    model = ModelConfig(channels=8, channel_mult=(1,), blocks=1, attn_resolutions=(), dropout=0.0, precond="edm")
    t = TrainConfig(kimg=0.032, batch=8, lr=1e-3, warmup_kimg=0.0, warmup_epochs=None, ema_mode="constant",
                    ema_decay=0.9, ema_halflife_epochs=None,
                    snapshot_kimg=None, device="cpu")
    run = train(good, tmp_path / "run", model, t, stop_after_steps=1)
    state = run / "state.safetensors"
    marker = tmp_path / "marker"
    if fmt == "pickle":
        state.write_bytes(pickle.dumps({"model": Payload(marker), "step": 1}))
    else:
        torch.save({"model": Payload(marker), "step": 1}, state)
    before = state.read_bytes()
    with pytest.raises(Exception, match="state.safetensors: damaged or not a safetensors file") as e:
        train(good, run, model, t)
    assert e.type.__name__ == "UsageError" and not marker.exists()
    assert state.read_bytes() == before  # left as found for the user to inspect
    assert not (run / "final.safetensors").exists()


def _object_npz(path, marker, member="images"):
    rng = np.random.default_rng(1)
    arrays = {"images": rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8), "labels": np.zeros(4, np.int64)}
    arrays[member] = np.array([Payload(marker)] * 4, dtype=object)
    with zipfile.ZipFile(path, "w") as z:
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=True)
            z.writestr(f"{k}.npy", buf.getvalue())


@pytest.mark.parametrize("member", ["images", "labels"])
@pytest.mark.parametrize("command", ["data", "train", "sample", "measure-samples", "measure-train"])
def test_npz_with_object_arrays_never_runs(command, member, good, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.npz"
    _object_npz(evil, marker, member)
    out = tmp_path / "out"
    argv = {
        "data": ["data", "--source", f"npz:{evil}", "--out", str(out)],
        "train": ["train", "--data", str(evil), "--out", str(out), "--channels", "8", "--kimg", "0.008"],
        "sample": ["sample", "--optimal", str(evil), "--n", "2", "--steps", "2", "--out", str(out / "s.npz")],
        "measure-samples": ["measure", "--samples", str(evil), "--train", str(good), "--out", str(out)],
        "measure-train": ["measure", "--samples", str(good), "--train", str(evil), "--out", str(out)],
    }[command]
    _refused(argv, capsys, marker, str(evil))
    assert not out.exists()


def test_cifar10_archive_with_a_payload_never_runs_from_the_cli(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python(path, batch1=exec_payload(marker))
    _refused(["data", "--source", f"cifar10:{path}", "--out", str(tmp_path / "out")], capsys, marker, "refused")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_name", ["../escaped.png", "/tmp/escaped-abs.png", "00000/../../escaped.png"])
def test_zip_members_that_escape_touch_nothing_outside(bad_name, tmp_path, capsys):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    inner = tmp_path / "inner"
    inner.mkdir()
    write_edm_zip(inner / "a.zip", imgs, None, extra={bad_name: png_bytes(imgs[0])})
    before = sorted(p.name for p in tmp_path.iterdir())
    _refused(["data", "--source", f"zip:{inner / 'a.zip'}", "--out", str(inner / "out")], capsys,
             tmp_path / "marker", "escapes the archive")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and sorted(p.name for p in inner.iterdir()) == ["a.zip"]
    assert not os.path.exists("/tmp/escaped-abs.png")


def _png_folder_with_loop(root, rng, n=3):
    from PIL import Image

    (root / "a" / "b").mkdir(parents=True)
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / "a" / f"{i}.png")
    os.symlink("../..", root / "a" / "b" / "loop")  # a → b → loop → root → a → …
    os.symlink(".", root / "self")
    return images


def test_folder_with_symlink_loops_loads_each_image_once(tmp_path, capsys):
    from diffmem.io import load_images

    rng = np.random.default_rng(3)
    images = _png_folder_with_loop(tmp_path / "imgs", rng)
    got = load_images(tmp_path / "imgs")
    assert got.images.shape == (3, 1, 8, 8) and np.array_equal(got.images[:, 0], images)
    assert main(["measure", "--samples", str(tmp_path / "imgs"), "--train", str(tmp_path / "imgs"), "--json"]) == 0
    assert '"n_samples": 3' in capsys.readouterr().out
    assert main(["data", "--source", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "d"), "--json"]) == 0
    from diffmem.data import load_dataset

    ds, _ = load_dataset(tmp_path / "d")
    assert ds.images.shape == (3, 1, 8, 8)


def test_cifar10_folder_with_a_symlink_loop(tmp_path, capsys):
    import tarfile

    path = tmp_path / "c.tar.gz"
    write_cifar_python(path)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    top = next((tmp_path / "x").iterdir())
    os.symlink("..", top / "loop")
    from diffmem.data import load_source

    a, b = load_source(f"cifar10:{path}"), load_source(f"cifar10:{top}")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
