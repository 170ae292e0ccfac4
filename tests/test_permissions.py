"""Artefacts honour the umask: 0644 files / 0755 directories under 022, 0640 / 0750 under 027, still atomic."""

import os
import stat

import numpy as np
import pytest

from diffmem import artefacts
from diffmem.cli import main
from diffmem.io import ImageSet, save_image_set


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root):
    """(relative path, permission bits) of everything below ``root``, ``root`` included."""
    out = [(".", stat.S_IMODE(os.stat(root).st_mode))]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out.append((os.path.relpath(p, root), stat.S_IMODE(os.lstat(p).st_mode)))
    return out


def _check_tree(root, umask):
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    for rel, mode in _modes(root):
        want = want_dir if os.path.isdir(os.path.join(root, rel)) else want_file
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)} under umask {oct(umask)}"


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    artefacts.atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    artefacts.atomic_save_npz(tmp_path / "a" / "y.npz", images=np.zeros((1, 1, 2, 2), np.uint8))
    with artefacts.atomic_dir(tmp_path / "b") as d:
        (d / "z.txt").write_text("z")
        artefacts.atomic_write_text(d / "w.txt", "w")
    _check_tree(tmp_path / "a", umask)
    _check_tree(tmp_path / "b", umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "x.json").st_mode) == (0o644 if umask == 0o022 else 0o640)
    # still atomic: no temporary is left beside the files
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.npz"]


def test_every_artefact_of_the_commands_honours_the_umask(tmp_path, umask, capsys):
    from diffmem.config import ModelConfig, TrainConfig
    from diffmem.train import train

    rng = np.random.default_rng(0)
    train_npz = tmp_path / "in" / "train.npz"
    save_image_set(train_npz, ImageSet(rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8)))
    assert main(["data", "--source", f"npz:{train_npz}", "--out", str(tmp_path / "data"), "--json"]) == 0
    assert main(["sample", "--optimal", str(tmp_path / "data"), "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "gen" / "s.npz"), "--json"]) == 0
    assert main(["sample", "--optimal", str(tmp_path / "data"), "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "pngs") + "/", "--json"]) == 0
    assert main(["measure", "--samples", str(tmp_path / "gen" / "s.npz"), "--train", str(tmp_path / "data"),
                 "--heldout", str(train_npz), "--out", str(tmp_path / "m"), "--json"]) == 0
    model = ModelConfig(channels=8, channel_mult=(1,), blocks=1, attn_resolutions=(), dropout=0.0, precond="edm",
                        resolution=8, in_channels=1)
    t = TrainConfig(kimg=0.016, batch=8, lr=1e-3, warmup_kimg=0.0, warmup_epochs=None, ema_mode="constant",
                    ema_decay=0.9, ema_halflife_epochs=None, snapshot_kimg=0.008, device="cpu")
    train(tmp_path / "data", tmp_path / "run", model, t)
    capsys.readouterr()
    for d in ("data", "gen", "pngs", "m", "run"):
        _check_tree(tmp_path / d, umask)
