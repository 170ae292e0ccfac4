"""Images keep their names (relative paths) through folders, zips, .npz files and dataset artefacts;
the channel and resolution conversions of ``diffmem measure`` against independent references."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffmem import io
from diffmem.cli import main
from diffmem.data import load_dataset
from diffmem.data.convert import Conversion, to_channels
from diffmem.errors import UsageError
from test_data_sources import png_bytes, write_edm_zip


def _save(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


def test_natural_order_and_names_of_a_folder(tmp_path, rng):
    imgs = rng.integers(0, 256, (12, 1, 4, 4), dtype=np.uint8)
    for i, a in enumerate(imgs):
        _save(tmp_path / "f" / f"{i}.png", a)
    s = io.load_images(tmp_path / "f")
    assert list(s.names) == [f"{i}.png" for i in range(12)]  # 2.png before 10.png
    np.testing.assert_array_equal(s.images, imgs)
    assert io.natural_key("a/img2.png") < io.natural_key("a/img10.png") < io.natural_key("b/img1.png")
    assert sorted(["x10", "x9", "X1", "x09"], key=io.natural_key) == ["X1", "x09", "x9", "x10"]


def test_names_survive_npz_round_trip_without_pickles(tmp_path, rng):
    s = io.ImageSet(rng.integers(0, 256, (3, 1, 2, 2), dtype=np.uint8), names=io.names_array(["a.png", "b/ü.png", "c"]))
    io.save_image_set(tmp_path / "x.npz", s)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as z:
        assert z["names"].dtype.kind == "U"
    assert list(io.load_npz(tmp_path / "x.npz").names) == ["a.png", "b/ü.png", "c"]
    np.savez(tmp_path / "bad.npz", images=s.images, names=np.arange(3))
    with pytest.raises(UsageError, match="'names' has dtype"):
        io.load_npz(tmp_path / "bad.npz")
    assert list(io.default_names(3, np.array([5, -1, 12]))) == ["seed-000005", "#1", "seed-000012"]


def test_zip_plain_and_edm_style_are_read_with_names_and_labels(tmp_path, rng):
    imgs = rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    names = write_edm_zip(tmp_path / "edm.zip", imgs, np.array([7, 3, 7]))
    for spec in (tmp_path / "edm.zip", f"zip:{tmp_path / 'edm.zip'}"):
        s = io.load_images(spec)
        assert list(s.names) == names and s.labels.tolist() == [7, 3, 7]  # labels as dataset.json writes them
        np.testing.assert_array_equal(s.images, imgs)
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        for n in ("cats/10.png", "cats/9.png", "dogs/1.png"):
            z.writestr(n, png_bytes(imgs[0]))
    s = io.load_images(tmp_path / "plain.zip")
    assert list(s.names) == ["cats/9.png", "cats/10.png", "dogs/1.png"] and s.labels is None


def test_dataset_artefact_keeps_folder_names(tmp_path, rng, capsys):
    imgs = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    for i, a in enumerate(imgs):
        _save(tmp_path / "tree" / ("cat" if i % 2 else "dog") / f"img{i}.png", a)
    assert main(["data", "--source", f"folder:{tmp_path / 'tree'}", "--size", "6", "--labels", "true",
                 "--out", str(tmp_path / "ds"), "--json"]) == 0
    s, k = load_dataset(tmp_path / "ds")
    for name, img, label in zip(s.names, s.images, s.labels):  # each stored image is the file its name says
        cls, file = name.split("/")
        i = int(file[3:-4])
        np.testing.assert_array_equal(img, imgs[i])
        assert label == ["cat", "dog"].index(cls)


def test_luma_and_gray_to_rgb_against_the_formula(rng):
    rgb = rng.integers(0, 256, (5, 3, 6, 6), dtype=np.uint8)
    r, g, b = (rgb[:, i].astype(np.float64) for i in range(3))
    want = np.floor(0.299 * r + 0.587 * g + 0.114 * b + 0.5)  # BT.601 luma, rounded half up (float64 reference)
    got = to_channels(rgb, 1)
    assert got.shape == (5, 1, 6, 6)
    assert np.max(np.abs(got[:, 0] - want)) <= 1 and np.mean(got[:, 0] == want) > 0.99  # float ties differ at most
    exact = (299 * r + 587 * g + 114 * b + 500) // 1000
    np.testing.assert_array_equal(got[:, 0], exact)
    np.testing.assert_array_equal(to_channels(np.full((1, 3, 1, 1), 255, np.uint8), 1), [[[[255]]]])
    gray = rng.integers(0, 256, (2, 1, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_channels(gray, 3), np.concatenate([gray] * 3, axis=1))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[:, :1])], axis=1)
    np.testing.assert_array_equal(to_channels(rgba, 3), rgb)


def test_resize_is_the_resampling_of_data_resolution(tmp_path, rng):
    from diffmem.data.resize import downsample

    big = rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    conv = Conversion(resize=4, channels=1)
    got = conv(big)
    # box average of 4×4 blocks of the luma, rounded half up (float64 reference)
    f = big.astype(np.float64)
    luma = np.floor((299 * f[:, 0] + 587 * f[:, 1] + 114 * f[:, 2] + 500) / 1000)
    want = np.floor(luma.reshape(4, 4, 4, 4, 4).mean(axis=(2, 4)) + 0.5)
    np.testing.assert_array_equal(got[:, 0], want)
    np.testing.assert_array_equal(Conversion(resize=4)(big), downsample(big, 4))
    with pytest.raises(UsageError, match="--resize: 32 is larger"):
        Conversion(resize=32)(big)
    for bad, msg in ((Conversion(channels=2), "--channels: 2"), (Conversion(resize=0), "--resize: 0"),
                     (Conversion(resample="cubic"), "--resample: 'cubic'")):
        with pytest.raises(UsageError, match=msg):
            bad.check()


def test_a_folder_of_mixed_shapes_loads_once_converted(tmp_path, rng):
    _save(tmp_path / "m" / "a.png", rng.integers(0, 256, (3, 16, 16), dtype=np.uint8))
    _save(tmp_path / "m" / "b.png", rng.integers(0, 256, (1, 8, 8), dtype=np.uint8))
    with pytest.raises(UsageError, match="images differ in sizes.*HINT"):
        io.load_images(tmp_path / "m", hint="HINT")
    s = io.load_images(tmp_path / "m", convert=Conversion(resize=8, channels=1))
    assert s.images.shape == (2, 1, 8, 8) and list(s.names) == ["a.png", "b.png"]


def test_samples_folder_manifest_gives_seeds_and_labels(tmp_path, rng):
    imgs = rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    for i, a in enumerate(imgs):
        _save(tmp_path / "s" / f"seed-{i + 5:06d}.png", a)
    files = [{"name": f"seed-{i + 5:06d}.png", "seed": i + 5, "label": i} for i in range(2)]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"stage": "samples", "files": files}))
    s = io.load_images(tmp_path / "s")
    assert s.seeds.tolist() == [5, 6] and s.labels.tolist() == [0, 1]
