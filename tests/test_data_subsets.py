"""Subsets (balance, nesting, seeds, label modes, mixing), resizing and the duplicate report."""

import numpy as np
import pytest

from diffmem.config import DataConfig
from diffmem.data import make_dataset
from diffmem.data.digits import load_digits
from diffmem.data.duplicates import duplicate_report, nearest_other
from diffmem.data.resize import block_mean, downsample
from diffmem.data.shapes import render_shapes
from diffmem.data.subsets import class_sequence, mix_pattern, priority_order

DIGIT_LABELS = load_digits().labels  # the source's true labels, the reference for every check


def counts(labels, classes):
    return np.bincount(labels, minlength=classes)


# ----------------------------------------------------------------------------------------------
# Priority order: balance and nesting


@pytest.mark.parametrize("size", [1, 9, 10, 64, 333, 1000])
def test_every_prefix_is_class_balanced(size):
    order = priority_order(DIGIT_LABELS, seed=0, size=size)
    c = counts(DIGIT_LABELS[order[:size]], 10)
    assert c.sum() == size and c.max() - c.min() <= 1


def test_water_filling_when_a_class_runs_out():
    class_of = np.array([0] * 3 + [1] * 10 + [2] * 10)
    order = priority_order(class_of, seed=1, size=None)
    assert sorted(order.tolist()) == list(range(23))  # every candidate, once
    assert counts(class_of[order[:15]], 3).tolist() == [3, 6, 6]
    assert sorted(counts(class_of[order[:16]], 3).tolist()) == [3, 6, 7]
    assert counts(class_of[order[:6]], 3).tolist() == [2, 2, 2]


def test_nested_by_default_and_independent_on_request():
    cfgs = {n: DataConfig(size=n, seed=3) for n in (16, 64, 256)}
    ids = {n: make_dataset(c).source_ids for n, c in cfgs.items()}
    assert np.array_equal(ids[64][:16], ids[16]) and np.array_equal(ids[256][:64], ids[64])
    again = make_dataset(cfgs[64])
    assert np.array_equal(again.source_ids, ids[64]) and np.array_equal(again.images, load_digits().images[ids[64]])
    other_seed = make_dataset(DataConfig(size=64, seed=4)).source_ids
    assert len(set(other_seed) & set(ids[64])) < 32
    ind = {n: make_dataset(DataConfig(size=n, seed=3, nested=False)).source_ids for n in (16, 64)}
    assert not set(ind[16]) <= set(ind[64])
    assert counts(DIGIT_LABELS[ind[64]], 10).max() - counts(DIGIT_LABELS[ind[64]], 10).min() <= 1


def test_classes_keeps_the_first_c_evenly():
    d = make_dataset(DataConfig(size=100, classes=3, labels="true"))
    assert d.labels.tolist() == DIGIT_LABELS[d.source_ids].tolist()
    assert counts(d.labels, 3).tolist() in ([34, 33, 33], [33, 34, 33], [33, 33, 34])
    assert d.info["label_classes"] == 3 and d.info["class_names"] == ["0", "1", "2"]
    all_c = make_dataset(DataConfig(classes=2))
    assert all_c.info["n_images"] == int(np.sum(DIGIT_LABELS < 2))


# ----------------------------------------------------------------------------------------------
# Label modes


def test_label_modes():
    true = make_dataset(DataConfig(size=50, labels="true"))
    assert np.array_equal(true.labels, DIGIT_LABELS[true.source_ids]) and true.info["label_classes"] == 10
    none = make_dataset(DataConfig(size=50))
    assert (none.labels == -1).all() and none.info["label_classes"] == 0
    assert np.array_equal(none.source_ids, true.source_ids)  # labels do not change the draw
    uniq = make_dataset(DataConfig(size=50, labels="unique"))
    assert uniq.labels.tolist() == list(range(50)) and uniq.info["label_classes"] == 50


def test_random_labels_are_seeded_uniform_nested_and_content_free():
    big = make_dataset(DataConfig(size=1000, labels="random", label_classes=4, seed=2))
    small = make_dataset(DataConfig(size=300, labels="random", label_classes=4, seed=2))
    assert big.info["label_classes"] == 4 and set(big.labels.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(big.labels[:300], small.labels)
    c = counts(big.labels, 4)
    assert np.all(np.abs(c - 250) < 4 * np.sqrt(1000 * 0.25 * 0.75))  # binomial, 4σ
    # independent of content: agreement with the true digit (mod 4) is at chance level
    agree = np.mean(big.labels == DIGIT_LABELS[big.source_ids] % 4)
    assert abs(agree - 0.25) < 0.06
    other = make_dataset(DataConfig(size=1000, labels="random", label_classes=4, seed=5))
    assert np.mean(other.labels == big.labels) < 0.35  # another seed, other labels (chance: 0.25)


# ----------------------------------------------------------------------------------------------
# Mixing


def test_mix_pattern_counts():
    for rate in (0.1, 0.25, 0.5, 0.9, 1.0):
        p = mix_pattern(200, rate)
        for n in (1, 7, 40, 200):
            assert p[:n].sum() == np.floor(n * rate + 0.5)


def test_class_sequence_stops_where_a_source_runs_out():
    seq = class_sequence(np.arange(3), np.arange(10) + 100, 0.5)
    # slots alternate mix, primary, …; the 8th slot would need a 4th primary image
    assert seq.tolist() == [100, 0, 101, 1, 102, 2, 103]
    assert class_sequence(np.arange(3), np.arange(10) + 100, 0.0).tolist() == [0, 1, 2]


def test_cli_defaults_hash_like_the_library_defaults():
    from diffmem.artefacts import config_hash
    from diffmem.cli import build_parser
    from diffmem.cli.data import config_from_args

    args = build_parser().parse_args(["data", "--source", "digits", "--size", "64", "--out", "x"])
    assert config_hash(config_from_args(args)) == config_hash(DataConfig(size=64))  # one dataset, reused by both
    args = build_parser().parse_args(["data", "--source", "digits", "--independent", "--out", "x"])
    assert config_from_args(args) == DataConfig(nested=False)


def test_mix_takes_the_stated_fraction_per_class_and_matches_classes():
    mix = "shapes:res=16,classes=10,diversity=0.3,n=300,channels=1"
    d = make_dataset(DataConfig(size=80, labels="true", mix=mix, mix_rate=0.25))
    assert d.info["from_mix"] == 20 and d.origin.sum() == 20
    for c in range(10):
        in_c = d.labels == c
        assert in_c.sum() == 8 and d.origin[in_c].sum() == 2  # ⌊8·0.25 + ½⌋ per class
    shapes = render_shapes(16, 10, 0.3, 300, channels=1)
    m = d.origin == 1
    assert np.array_equal(d.labels[m], d.source_ids[m] % 10)  # shapes image i has class i mod 10
    assert np.array_equal(d.images[m], block_mean(shapes[d.source_ids[m]], 8))  # brought to 8×8
    assert np.array_equal(d.images[~m], load_digits().images[d.source_ids[~m]])
    smaller = make_dataset(DataConfig(size=40, labels="true", mix=mix, mix_rate=0.25))
    assert np.array_equal(smaller.source_ids, d.source_ids[:40]) and np.array_equal(smaller.origin, d.origin[:40])


# ----------------------------------------------------------------------------------------------
# Resizing


def test_box_is_the_exact_block_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 2, 12, 12), dtype=np.uint8)
    ref = np.floor(x.astype(np.float64).reshape(3, 2, 4, 3, 4, 3).mean(axis=(3, 5)) + 0.5)
    assert np.array_equal(downsample(x, 4, "box"), ref.astype(np.uint8))
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[None, None]
    assert (downsample(checker, 4, "box") == 128).all()  # antialiased: no aliasing to 0 or 255
    assert downsample(x, 12, "box") is x


def _lanczos_ref(x: np.ndarray, r: int) -> np.ndarray:
    """Separable Lanczos-3 downsample in float64, kernel widened by the scale factor."""
    def weights(n_in, n_out):
        s = n_in / n_out
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            t = (np.arange(n_in) + 0.5 - (i + 0.5) * s) / s
            w[i] = np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3), 0.0)
            w[i] /= w[i].sum()
        return w

    W = weights(x.shape[-1], r)
    return np.clip(np.einsum("ij,ncjk,lk->ncil", W, x.astype(np.float64), W), 0, 255)


@pytest.mark.parametrize("r", [8, 5])
def test_lanczos_matches_an_independent_reference(r):
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.normal(0, 6, (2, 3, 16, 16)), axis=-1) + 128
    x = np.clip(smooth, 0, 255).astype(np.uint8)
    got = downsample(x, r, "lanczos").astype(np.float64)
    assert np.abs(got - _lanczos_ref(x, r)).max() <= 2.0
    flat = np.full((1, 1, 16, 16), 77, dtype=np.uint8)
    assert (downsample(flat, r, "lanczos") == 77).all()


def test_box_non_integer_factor_is_area_average():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 3, 9, 9), dtype=np.uint8)
    # 9 → 6 covers 1.5 pixels per output pixel: repeat every pixel twice (18×18), then 3×3 block means
    ref = x.repeat(2, axis=2).repeat(2, axis=3).astype(np.float64).reshape(2, 3, 6, 3, 6, 3).mean(axis=(3, 5))
    assert np.abs(downsample(x, 6, "box").astype(np.float64) - ref).max() <= 0.5 + 1e-9


# ----------------------------------------------------------------------------------------------
# Duplicates


def test_nearest_other_matches_brute_force():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (300, 3, 4, 4), dtype=np.uint8)
    nn, d2 = nearest_other(x)
    f = x.reshape(300, -1).astype(np.float64)
    full = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.fill_diagonal(full, np.inf)
    assert np.array_equal(d2, full.min(1)) and np.array_equal(full[np.arange(300), nn], full.min(1))


def test_duplicate_report_counts_planted_copies():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    x[5] = x[1]
    x[9] = x[1]  # a group of three
    x[12] = x[2]  # a pair
    x[15] = x[3]
    x[15, 0, 0, 0] = (int(x[3, 0, 0, 0]) + 3) % 256 if x[3, 0, 0, 0] < 253 else x[3, 0, 0, 0] - 3  # RMS 3/8
    r = duplicate_report(x, threshold_rms=0.375)
    assert r["exact"] == {"images": 5, "groups": 2, "redundant": 3}
    assert r["near"]["images"] == 7 and r["near"]["threshold_rms"] == 0.375
    assert duplicate_report(x, threshold_rms=0.37)["near"]["images"] == 5
    assert r["near"]["examples"][0]["rms"] == 0.0


def test_shapes_at_zero_diversity_reports_the_known_duplicates():
    d = make_dataset(DataConfig(source="shapes:res=8,classes=4,diversity=0,n=40", near_dup_threshold=0.5))
    assert d.info["duplicates"]["exact"] == {"images": 40, "groups": 4, "redundant": 36}
