"""Auditing as a new user would: folders of named PNGs, planted copies of known files, mixed shapes, an
EDM-style dataset zip, and a held-out split. Every number is checked against a float64 NumPy brute force
computed here from the files themselves."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from diffmem.cli import main
from diffmem.data.digits import load_digits
from test_data_sources import write_edm_zip


def _save(path, a, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path, format=fmt, **kw)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def brute(samples, train, threshold=1 / 3):
    """NN₁ (lowest index among the nearest), d₁, NN₂ (nearest image whose pixels differ from NN₁'s), d₂, memorized."""
    s = samples.reshape(len(samples), -1).astype(np.float64)
    t = train.reshape(len(train), -1).astype(np.float64)
    d = np.sqrt(((s[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    nn1 = np.argmin(d, axis=1)  # argmin returns the lowest index among ties
    same = (t[nn1][:, None, :] == t[None, :, :]).all(-1)  # training images identical to NN₁
    d2 = np.where(same, np.inf, d).min(axis=1)
    d1 = d[np.arange(len(s)), nn1]
    return nn1, d1, d2, d1 / d2 < threshold


@pytest.fixture(scope="module")
def digits():
    src = load_digits()
    order = np.random.default_rng(5).permutation(len(src))
    return src.images[order]  # 1,797 × 1×8×8, shuffled once so that any split is exchangeable


def test_planted_copies_are_traced_to_their_files_and_ranked(tmp_path, digits, capsys):
    rng = np.random.default_rng(1)
    train = digits[:120]
    names = [f"digit_{i}.png" for i in range(120)]  # natural order: digit_2 before digit_10
    for n, a in zip(names, train):
        _save(tmp_path / "train" / n, a)
    planted = {7: 6, 42: 4, 100: 2}  # training index → copies planted
    samples, truth = [], []
    for t, k in planted.items():
        for _ in range(k):
            a = train[t].astype(np.int16)
            a.flat[rng.integers(0, 64, size=2)] += 3  # a near copy, not a bit-exact one
            samples.append(np.clip(a, 0, 255).astype(np.uint8))
            truth.append(names[t])
    samples += list(digits[1000:1030])  # 30 fresh digits the model never saw
    truth += [None] * 30
    perm = rng.permutation(len(samples))
    samples = np.stack(samples)[perm]
    truth = [truth[i] for i in perm]
    for i, a in enumerate(samples):
        _save(tmp_path / "gen" / f"s{i}.png", a)
    assert main(["measure", "--samples", str(tmp_path / "gen"), "--train", str(tmp_path / "train"),
                 "--out", str(tmp_path / "audit")]) == 0
    out = capsys.readouterr().out
    nn1, d1, d2, mem = brute(samples, train)
    rows = _rows(tmp_path / "audit" / "table.csv")
    assert [r["sample_name"] for r in rows] == [f"s{i}.png" for i in range(len(samples))]
    for r, i in zip(rows, range(len(samples))):
        assert int(r["sample_index"]) == i and r["nn1_name"] == names[nn1[i]] and int(r["nn1_index"]) == nn1[i]
        assert float(r["d1"]) == pytest.approx(d1[i], rel=1e-12) and float(r["d2"]) == pytest.approx(d2[i], rel=1e-12)
        assert (r["memorized"] == "true") == mem[i]
        if mem[i]:
            assert r["nn1_name"] == truth[i]  # every memorized sample names the file it copies
    assert all(mem[i] for i in range(len(samples)) if truth[i])  # every planted copy is found
    copies = _rows(tmp_path / "audit" / "copies.csv")
    assert len(copies) == 120
    want = np.bincount(nn1[mem], minlength=120)
    assert [(c["train_name"], int(c["copies"])) for c in copies[:3]] == [("digit_7.png", 6), ("digit_42.png", 4),
                                                                          ("digit_100.png", 2)]
    assert all(int(c["copies"]) == want[int(c["train_index"])] for c in copies)
    s = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert s["n_train_copied"] == np.count_nonzero(want) and s["top1pct_images"] == 2
    assert s["top1pct_share"] == pytest.approx((6 + 4) / mem.sum())
    assert [c["name"] for c in s["most_copied"][:3]] == ["digit_7.png", "digit_42.png", "digit_100.png"]
    assert "most copied:         digit_7.png ×6, digit_42.png ×4, digit_100.png ×2" in out
    assert (tmp_path / "audit" / "copies.png").is_file() and (tmp_path / "audit" / "grid.png").is_file()


def test_mixed_shapes_are_refused_then_converted(tmp_path, digits, capsys):
    train = digits[:50]
    for i, a in enumerate(train):
        _save(tmp_path / "train" / f"{i:03d}.png", a)
    big = np.repeat(np.repeat(train[[3, 9, 27]], 4, axis=2), 4, axis=3)  # 32×32, each pixel a 4×4 block
    rgb = np.concatenate([big] * 3, axis=1)
    _save(tmp_path / "gen" / "a.png", rgb[0])
    _save(tmp_path / "gen" / "b.jpg", rgb[1], quality=95)  # an RGB JPEG: lossy
    _save(tmp_path / "gen" / "c.png", big[2])  # a grayscale PNG among RGB files
    argv = ["measure", "--samples", str(tmp_path / "gen"), "--train", str(tmp_path / "train")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resize R" in err and "--channels 1|3" in err  # the folder mixes shapes
    assert main(argv + ["--channels", "1"]) == 2
    err = capsys.readouterr().err
    assert "32×32" in err.replace("1×32×32", "32×32") and "add --resize 8" in err
    assert main(argv + ["--channels", "1", "--resize", "8", "--out", str(tmp_path / "m"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["conversion"]["channels"] == 1 and s["conversion"]["resize"] == 8
    # the reference conversion, from the decoded files: BT.601 luma in float64, then 4×4 block means
    got = []
    for name in ("a.png", "b.jpg", "c.png"):
        a = np.asarray(Image.open(tmp_path / "gen" / name).convert("RGB"), dtype=np.float64)
        y = np.floor(0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2] + 0.5 - 1e-9)
        got.append(np.floor(y.reshape(8, 4, 8, 4).mean(axis=(1, 3)) + 0.5)[None])
    nn1, d1, d2, mem = brute(np.stack(got), train)
    rows = _rows(tmp_path / "m" / "table.csv")
    assert [r["sample_name"] for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert [r["nn1_name"] for r in rows] == ["003.png", "009.png", "027.png"] == [f"{i:03d}.png" for i in nn1]
    assert float(rows[0]["d1"]) == 0.0 and float(rows[2]["d1"]) == 0.0  # lossless files come back exactly
    assert [r["memorized"] == "true" for r in rows] == list(mem) == [True, True, True]


def test_edm_dataset_zip_as_training_set(tmp_path, digits, capsys):
    from diffmem.io import ImageSet, save_image_set

    train, labels = digits[:40], np.arange(40) % 7
    names = write_edm_zip(tmp_path / "dataset.zip", train, labels)
    samples = np.concatenate([train[[5, 5, 17]], digits[500:503]])
    save_image_set(tmp_path / "gen.npz", ImageSet(samples, seeds=np.arange(10, 16)))
    assert main(["measure", "--samples", str(tmp_path / "gen.npz"), "--train", f"zip:{tmp_path / 'dataset.zip'}",
                 "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    rows = _rows(tmp_path / "m" / "table.csv")
    assert [r["sample_name"] for r in rows] == [f"seed-{s:06d}" for s in range(10, 16)]
    assert [r["seed"] for r in rows] == [str(s) for s in range(10, 16)] and rows[0]["label"] == ""
    assert [r["nn1_name"] for r in rows[:3]] == [names[5], names[5], names[17]]
    copies = _rows(tmp_path / "m" / "copies.csv")
    assert (copies[0]["train_name"], copies[0]["copies"], copies[0]["label"]) == (names[5], "2", str(labels[5]))
    assert (copies[1]["train_name"], copies[1]["copies"]) == (names[17], "1")
    assert main(["measure", "--samples", str(tmp_path / "gen.npz"), "--train", str(tmp_path / "dataset.zip"),
                 "--json"]) == 0  # a plain path ending in .zip is read the same way
    assert json.loads(capsys.readouterr().out)["n_memorized"] == 3


def _blur(a):
    """3×3 box blur with edge replication, rounded half up."""
    p = np.pad(a.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    out = sum(p[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9
    return np.floor(out + 0.5).astype(np.uint8)


@pytest.mark.parametrize("kind", ["copies", "fresh", "blurred", "noisy"])
def test_heldout_baseline_known_answers_on_digits(tmp_path, digits, kind, capsys):
    from diffmem.io import ImageSet, save_image_set

    rng = np.random.default_rng(2)
    train, heldout, fresh = digits[:300], digits[300:700], digits[700:1300]
    samples = {
        "copies": train[rng.integers(0, 300, size=600)],
        "fresh": fresh,
        "blurred": _blur(fresh),
        "noisy": np.clip(fresh + rng.normal(0, 40, size=fresh.shape), 0, 255).round().astype(np.uint8),
    }[kind]
    for name, arr in (("train", train), ("heldout", heldout), ("gen", samples)):
        save_image_set(tmp_path / f"{name}.npz", ImageSet(arr))
    assert main(["measure", "--samples", str(tmp_path / "gen.npz"), "--train", str(tmp_path / "train.npz"),
                 "--heldout", str(tmp_path / "heldout.npz"), "--out", str(tmp_path / "m"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    h, c = s["heldout"], s["data_copying"]
    _, _, _, mem = brute(heldout, train)
    assert (h["n_heldout"], h["n_memorized"]) == (400, int(mem.sum()))  # the rule's false positives on digits
    assert h["memorization_ratio"] == pytest.approx(mem.mean()) and h["ci_low"] <= mem.mean() <= h["ci_high"]
    assert c["cells"] == 8 and len(c["per_cell"]) == 8 and c["n_samples"] == 600 and c["n_heldout"] == 400
    assert sum(p["n_heldout"] for p in c["per_cell"]) == 400 and sum(p["n_train"] for p in c["per_cell"]) == 300
    ct = c["c_t"]
    if kind == "copies":
        assert ct < -10 and s["memorization_ratio"] == 1.0
    elif kind == "fresh":
        assert abs(ct) < 3
    else:
        assert ct > 3
    assert len(_rows(tmp_path / "m" / "heldout.csv")) == 400


def test_copy_ranking_breaks_ties_the_same_way_everywhere(tmp_path, rng):
    from diffmem.io import ImageSet
    from diffmem.measure import measure, write_measurement
    from diffmem.measure.figures import copied_rows

    train = rng.integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    train[9] = train[7]  # a duplicate: one group, one count
    far = np.clip(train[7].astype(int) + 60, 0, 255).astype(np.uint8)  # NN₁ is image 7, but not memorized
    samples = np.stack([train[3], train[7], train[3], train[9], far])
    m = measure(samples, train)
    nn1, _, _, mem = brute(samples, train)
    assert m.nn1.tolist() == nn1.tolist() == [3, 7, 3, 7, 7] and m.memorized.tolist() == mem.tolist()
    out = write_measurement(m, tmp_path / "m", samples=ImageSet(samples), train=ImageSet(train))
    copies = _rows(out / "copies.csv")
    # 3 and 7 both have 2 copies; 7 is NN₁ of 3 samples: it ranks first; its duplicate 9 shares the count
    assert [(c["train_index"], c["copies"], c["nn1_samples"], c["duplicates"], c["duplicate_of"]) for c in copies[:3]] \
        == [("7", "2", "3", "2", "7"), ("9", "2", "3", "2", "7"), ("3", "2", "2", "1", "3")]
    s = json.loads((out / "summary.json").read_text())
    assert [c["train_index"] for c in s["most_copied"]] == [7, 3] and s["n_train_copied"] == 2
    assert [r[0] for r in copied_rows(m)] == [7, 3]
