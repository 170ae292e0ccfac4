"""Measurement in a feature space: precomputed embeddings and ONNX encoders against float64 NumPy references.

The ONNX encoders are assembled here with onnx.helper (linear projections whose output is known in closed
form); embeddings carry planted near-duplicates; both criteria are checked against a brute force.
"""

import csv
import dataclasses
import json
import sys

import numpy as np
import pytest

from diffmem.cli import main
from diffmem.config import MeasureConfig
from diffmem.errors import UsageError
from diffmem.io import ImageSet, save_image_set
from diffmem.measure.features import FeatureSpace, load_embeddings, measure_features, with_images


def brute_force(samples: np.ndarray, train: np.ndarray, distance: str):
    """Independent reference: float64 distances over all pairs (train rows distinct), NN₁, NN₂, max cosine."""
    a, b = samples.astype(np.float64), train.astype(np.float64)
    cos = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]
    d = 1.0 - cos if distance == "cosine" else np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(len(a))
    nn1, nn2 = order[:, 0], order[:, 1]
    return nn1, nn2, d[rows, nn1], d[rows, nn2], cos.max(1), cos.argmax(1)


@pytest.fixture
def planted(rng):
    """300 training vectors (D=64); samples: 20 near-duplicates of rows 0..19, then 30 fresh vectors."""
    train = rng.normal(size=(300, 64)).astype(np.float32)
    near = train[:20] + 0.05 * rng.normal(size=(20, 64)).astype(np.float32)
    fresh = rng.normal(size=(30, 64)).astype(np.float32)
    return np.concatenate([near, fresh]).astype(np.float32), train


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_planted_near_duplicates_found_and_fresh_vectors_not(planted, distance):
    samples, train = planted
    m = measure_features(samples, train, FeatureSpace(kind="precomputed", distance=distance))
    nn1, nn2, d1, d2, max_cos, argmax = brute_force(samples, train, distance)
    np.testing.assert_array_equal(m.nn1, nn1)
    np.testing.assert_array_equal(m.nn2, nn2)
    np.testing.assert_allclose(m.d1, d1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.d2, d2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.extra["max_cosine"], max_cos, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(m.extra["nn_cosine"], argmax)
    np.testing.assert_array_equal(m.nn1[:20], np.arange(20))
    assert m.memorized[:20].all() and not m.memorized[20:].any()
    assert m.extra["similar"][:20].all() and not m.extra["similar"][20:].any()
    s = m.summary
    assert (s["n_memorized"], s["n_samples"]) == (20, 50)
    sim = s["similarity"]
    assert (sim["n_similar"], sim["n_samples"], sim["threshold"]) == (20, 50, 0.5)
    assert sim["ci_low"] < 0.4 < sim["ci_high"]
    assert s["distance"].startswith("cosine" if distance == "cosine" else "l2")


def test_cosine_ignores_scale_and_exact_copies_have_ratio_zero(planted):
    samples, train = planted
    scaled = np.concatenate([train[[7, 8]] * 3.0, samples[20:23]]).astype(np.float32)  # same directions as 7, 8
    m = measure_features(scaled, train)
    np.testing.assert_array_equal(m.nn1[:2], [7, 8])
    assert m.ratio[0] < 1e-12 and m.ratio[1] < 1e-12 and m.extra["max_cosine"][:2].min() > 1 - 1e-12
    ml2 = measure_features(scaled, train, FeatureSpace(kind="precomputed", distance="l2"))
    _, _, d1, d2, _, _ = brute_force(scaled, train, "l2")
    np.testing.assert_allclose(ml2.ratio, d1 / d2, rtol=1e-9)
    assert not ml2.memorized[:2].any()  # in l2 the scale matters: 3·b is far from b


def test_similarity_threshold_counts_exactly(planted):
    samples, train = planted
    _, _, _, _, max_cos, _ = brute_force(samples, train, "cosine")
    tau = float(np.sort(max_cos)[25])  # 24 samples strictly above the 26th smallest value, 25 at or above
    m = measure_features(samples, train, FeatureSpace(kind="precomputed", similarity=tau))
    assert m.summary["similarity"]["n_similar"] == int((max_cos >= tau).sum()) == 25


def test_float64_embeddings_against_float32_training_vectors_are_widened(planted):
    samples, train = planted
    m = measure_features(samples.astype(np.float64), train)
    assert m.summary["feature_space"]["dtype"] == "float64" and m.memorized[:20].all()


@dataclasses.dataclass(frozen=True)
class NamedImages(ImageSet):
    names: np.ndarray | None = None


def test_embeddings_are_matched_to_images_by_name(rng, tmp_path):
    images = rng.integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    names = np.array([f"img{i}.png" for i in range(5)])
    vectors = rng.normal(size=(5, 3)).astype(np.float32)
    perm = np.array([3, 0, 4, 1, 2])
    np.savez(tmp_path / "f.npz", features=vectors[perm], names=names[perm])
    emb = with_images(load_embeddings(tmp_path / "f.npz", "--samples-features"),
                      NamedImages(images=images, names=names), "--samples-features", "--samples")
    np.testing.assert_array_equal(emb.vectors, vectors)
    with pytest.raises(UsageError, match="names do not match"):
        with_images(load_embeddings(tmp_path / "f.npz", "x"), NamedImages(images=images, names=np.array(list("abcde"))),
                    "x", "--samples")
    with pytest.raises(UsageError, match="4 images; expected one vector per image"):
        with_images(load_embeddings(tmp_path / "f.npz", "x"), ImageSet(images[:4]), "--samples-features",
                    "--samples")


def test_bad_embedding_files_are_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "obj.npz", features=np.zeros((2, 3), np.float32), names=np.array(["a", None], dtype=object))
    np.savez(tmp_path / "int.npz", features=np.zeros((2, 3), np.int64))
    np.savez(tmp_path / "nan.npz", features=np.array([[0, np.nan]], np.float32))
    np.savez(tmp_path / "none.npz", images=np.zeros((2, 1, 2, 2), np.uint8))
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04K\x01.")
    for name, text in [("obj", "object arrays"), ("int", "expected float32"), ("nan", "NaN"),
                       ("none", "no 'features' array"), ("pickle", "not a .npz archive")]:
        with pytest.raises(UsageError, match=text):
            load_embeddings(tmp_path / f"{name}.npz", "--train-features")


# ---------------------------------------------------------------------------------------------- CLI, precomputed


def _save_embeddings(path, features, **extra):
    np.savez(path, features=features, **extra)
    return str(path)


def test_cli_precomputed_embeddings_both_criteria(planted, tmp_path, capsys):
    samples, train = planted
    s = _save_embeddings(tmp_path / "s.npz", samples, seeds=np.arange(100, 150))
    t = _save_embeddings(tmp_path / "t.npz", train)
    assert main(["measure", "--features", "precomputed", "--samples", s, "--train", t, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["n_memorized"], d["similarity"]["n_similar"], d["n_samples"]) == (20, 20, 50)
    assert d["feature_space"]["distance"] == "cosine" and d["dim"] == 64
    assert main(["measure", "--features", "precomputed", "--samples", s, "--train", t, "--similarity", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "similarity copies:" in out and "0 of 50 samples have cosine similarity >= 0.99" in out
    assert "cosine distance 1 - cos" in out


def test_cli_precomputed_beside_images_writes_grid_and_table(planted, tmp_path, rng, capsys):
    samples, train = planted
    train_images = rng.integers(0, 256, size=(300, 1, 4, 4), dtype=np.uint8)
    sample_images = np.concatenate([train_images[:20], rng.integers(0, 256, size=(30, 1, 4, 4), dtype=np.uint8)])
    save_image_set(tmp_path / "si.npz", ImageSet(sample_images, seeds=np.arange(50)))
    save_image_set(tmp_path / "ti.npz", ImageSet(train_images))
    out = tmp_path / "m"
    args = ["measure", "--features", "precomputed", "--samples", str(tmp_path / "si.npz"),
            "--samples-features", _save_embeddings(tmp_path / "s.npz", samples), "--train", str(tmp_path / "ti.npz"),
            "--train-features", _save_embeddings(tmp_path / "t.npz", train), "--distance", "l2", "--out", str(out)]
    assert main(args) == 0
    assert {"grid.png", "table.npz", "summary.json", "ratios.png"} <= {p.name for p in out.iterdir()}
    with np.load(out / "table.npz", allow_pickle=False) as z:
        assert z["similar"][:20].all() and not z["similar"][20:].any()
        np.testing.assert_array_equal(z["nn1"][:20], np.arange(20))
        np.testing.assert_array_equal(z["seeds"], np.arange(50))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["features"] == "precomputed" and summary["feature_space"]["distance"] == "l2"


def test_cli_feature_option_errors_are_one_line_exit_2(planted, tmp_path, capsys):
    samples, train = planted
    s = _save_embeddings(tmp_path / "s.npz", samples)
    t = _save_embeddings(tmp_path / "t.npz", train[:, :10])
    cases = [
        (["--samples", s, "--train", s, "--distance", "l2"], "--distance: applies to a feature space only"),
        (["--samples", s, "--train", s, "--features", "model.pt"], "--features: 'model.pt' is not valid"),
        (["--samples", s, "--train", s, "--features", "nothere.onnx"], "--features: 'nothere.onnx' does not exist"),
        (["--samples", s, "--train", t, "--features", "precomputed"], "expected the same shape"),
        (["--samples", str(tmp_path), "--train", s, "--features", "precomputed"], "--samples: "),
        (["--samples", s, "--train", s, "--features", "precomputed", "--similarity", "2"], "--similarity: 2.0"),
        (["--samples", s, "--train", s, "--features", "precomputed", "--preprocess", "size=8"],
         "--preprocess: does not apply"),
    ]
    for extra, text in cases:
        assert main(["measure", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1, (extra, err)


# ---------------------------------------------------------------------------------------------- ONNX encoders


def linear_encoder(path, w: np.ndarray, in_shape: list, *, nhwc: bool = False, out4d: bool = False,
                   second_output: bool = False):
    """An ONNX model: (Transpose NHWC→NCHW) → Flatten → MatMul(w) (→ Reshape N×D×1×1); w float32 (C·H·W)×D."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(w.astype(np.float32), "W")]
    x = "image"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["emb"])]
    outputs = []
    d = w.shape[1]
    if out4d:
        inits.append(numpy_helper.from_array(np.array([-1, d, 1, 1], np.int64), "shape4"))
        nodes.append(helper.make_node("Reshape", ["emb", "shape4"], ["emb4"]))
        outputs.append(helper.make_tensor_value_info("emb4", TensorProto.FLOAT, [in_shape[0], d, 1, 1]))
    else:
        outputs.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, [in_shape[0], d]))
    if second_output:
        outputs.insert(0, helper.make_tensor_value_info("flat", TensorProto.FLOAT, [in_shape[0], None]))
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_onnx_preprocessing_from_the_json_beside_the_model_matches_numpy(rng, tmp_path):
    pytest.importorskip("onnxruntime")
    from diffmem.measure.encoder import OnnxEncoder, load_preprocess

    w = rng.normal(size=(3 * 6 * 6, 12)).astype(np.float32)
    model = linear_encoder(tmp_path / "enc.onnx", w, ["batch", 3, 6, 6])
    (tmp_path / "enc.json").write_text(json.dumps({"value_range": [-1, 1], "channels": "bgr",
                                                   "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0], "batch": 4}))
    images = rng.integers(0, 256, size=(10, 3, 6, 6), dtype=np.uint8)
    enc = OnnxEncoder(model, load_preprocess(model))
    got = enc(images)
    # reference: u/255 onto [-1, 1], RGB → BGR, per-channel (x − mean)/std, flatten, project
    x = -1.0 + 2.0 * images.astype(np.float64) / 255.0
    x = x[:, ::-1]
    x = (x - np.array([0.1, 0.2, 0.3])[None, :, None, None]) / np.array([0.5, 0.25, 2.0])[None, :, None, None]
    want = x.reshape(10, -1) @ w.astype(np.float64)
    assert got.dtype == np.float32 and got.shape == (10, 12) and enc.batch == 4
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # flags override the JSON key by key
    enc2 = OnnxEncoder(model, load_preprocess(model, {"channels": "rgb"}))
    x2 = -1.0 + 2.0 * images.astype(np.float64) / 255.0
    x2 = (x2 - np.array([0.1, 0.2, 0.3])[None, :, None, None]) / np.array([0.5, 0.25, 2.0])[None, :, None, None]
    np.testing.assert_allclose(enc2(images), x2.reshape(10, -1) @ w.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_onnx_fixed_batch_nhwc_4d_output_gray_input_and_nearest_resize(rng, tmp_path):
    pytest.importorskip("onnxruntime")
    from diffmem.measure.encoder import OnnxEncoder, load_preprocess

    w = rng.normal(size=(3 * 8 * 8, 5)).astype(np.float32)
    model = linear_encoder(tmp_path / "nhwc.onnx", w, [1, 8, 8, 3], nhwc=True, out4d=True, second_output=True)
    gray = rng.integers(0, 256, size=(3, 1, 4, 4), dtype=np.uint8)
    enc = OnnxEncoder(model, load_preprocess(model, {"resample": "nearest", "output": "emb4"}))
    assert (enc.layout, enc.fixed_batch, enc.size, enc.channels) == ("nhwc", 1, (8, 8), 3)
    got = enc(gray)
    # reference: each pixel repeated 2×2 (exact nearest upsampling), gray copied to three channels, NCHW order
    up = np.repeat(np.repeat(gray.astype(np.float64) / 255.0, 2, axis=2), 2, axis=3)
    x = np.repeat(up, 3, axis=1)
    np.testing.assert_allclose(got, x.reshape(3, -1) @ w.astype(np.float64), rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match="--features output: 'nope' is not valid"):
        OnnxEncoder(model, load_preprocess(model, {"output": "nope"}))
    with pytest.raises(UsageError, match=r"size: \[6, 6\] is not valid; expected the model's fixed input size"):
        OnnxEncoder(model, load_preprocess(model, {"size": 6}))


def test_cli_onnx_encoder_finds_planted_copies_not_fresh_images(rng, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    w = rng.normal(size=(3 * 8 * 8, 256)).astype(np.float32)
    model = linear_encoder(tmp_path / "enc.onnx", w, ["N", 3, 8, 8])
    (tmp_path / "enc.json").write_text(json.dumps({"mean": 0.5, "std": 0.25}))  # centred: fresh images are dissimilar
    train = rng.integers(0, 256, size=(60, 3, 16, 16), dtype=np.uint8)  # resized to 8×8 by the encoder
    copies = np.clip(train[:12].astype(int) + rng.integers(-6, 7, size=(12, 3, 16, 16)), 0, 255).astype(np.uint8)
    fresh = rng.integers(0, 256, size=(18, 3, 16, 16), dtype=np.uint8)
    save_image_set(tmp_path / "train.npz", ImageSet(train))
    save_image_set(tmp_path / "gen.npz", ImageSet(np.concatenate([copies, fresh]), seeds=np.arange(30)))
    out = tmp_path / "m"
    assert main(["measure", "--samples", str(tmp_path / "gen.npz"), "--train", str(tmp_path / "train.npz"),
                 "--features", model, "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["n_memorized"], d["similarity"]["n_similar"], d["n_samples"]) == (12, 12, 30)
    assert d["feature_space"]["size"] == [8, 8] and d["feature_space"]["preprocess"]["mean"] == [0.5]
    with np.load(out / "table.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["nn1"][:12], np.arange(12))
        assert z["memorized"][:12].all() and not z["memorized"][12:].any()
    assert (out / "grid.png").is_file()
    # the audit tables are the same as for pixels: names by index, the 12 copied training images ranked first
    rows = list(csv.DictReader((out / "copies.csv").open()))
    assert sorted(int(r["train_index"]) for r in rows[:12]) == list(range(12))
    assert all(int(r["copies"]) == 1 for r in rows[:12]) and all(int(r["copies"]) == 0 for r in rows[12:])
    assert len(list(csv.DictReader((out / "table.csv").open()))) == 30
    # the held-out baseline is measured in pixels only: refused in one line, nothing written
    assert main(["measure", "--samples", str(tmp_path / "gen.npz"), "--train", str(tmp_path / "train.npz"),
                 "--heldout", str(tmp_path / "train.npz"), "--features", model, "--out", str(tmp_path / "h")]) == 2
    assert "--heldout:" in capsys.readouterr().err and not (tmp_path / "h").exists()


def test_onnx_models_with_custom_operators_are_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from diffmem.measure.encoder import OnnxEncoder

    node = helper.make_node("RunShell", ["image"], ["emb"], domain="com.example.custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.custom", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(UsageError, match="is not a model onnxruntime can load"):
        OnnxEncoder(tmp_path / "custom.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(UsageError, match="is not a model onnxruntime can load"):
        OnnxEncoder(tmp_path / "junk.onnx")


def test_preprocess_errors_name_the_json_file_or_the_flag(rng, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    s = tmp_path / "s.npz"
    save_image_set(s, ImageSet(rng.integers(0, 256, size=(4, 3, 4, 4), dtype=np.uint8)))
    model = linear_encoder(tmp_path / "enc.onnx", rng.normal(size=(48, 4)).astype(np.float32), ["N", 3, 4, 4])
    base = ["measure", "--samples", str(s), "--train", str(s), "--features", model]
    assert main([*base, "--preprocess", "colour=rgb"]) == 2
    assert "--preprocess: unknown key 'colour'" in capsys.readouterr().err
    assert main([*base, "--preprocess", "std=0"]) == 2
    assert "--preprocess std: [0.0] is not valid; expected numbers > 0" in capsys.readouterr().err
    assert main([*base, "--preprocess", "mean=0.1,0.2"]) == 2
    assert "--features mean: [0.1, 0.2] is not valid; expected 1 or 3 values" in capsys.readouterr().err
    (tmp_path / "enc.json").write_text(json.dumps({"channels": "grb"}))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'enc.json'} channels: 'grb' is not valid; expected rgb or bgr" in err


def test_missing_extra_is_one_line_naming_it(rng, tmp_path, monkeypatch, capsys):
    s = tmp_path / "s.npz"
    save_image_set(s, ImageSet(rng.integers(0, 256, size=(4, 3, 4, 4), dtype=np.uint8)))
    (tmp_path / "enc.onnx").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    assert main(["measure", "--samples", str(s), "--train", str(s), "--features", str(tmp_path / "enc.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--features: needs the onnxruntime package, which is not installed; install the [onnx] extra" in err


def test_measure_config_of_features_keeps_pixel_threshold_semantics(planted):
    samples, train = planted
    m = measure_features(samples, train, cfg=MeasureConfig(threshold=0.01))
    nn1, nn2, d1, d2, _, _ = brute_force(samples, train, "cosine")
    np.testing.assert_array_equal(m.memorized, d1 / d2 < 0.01)


def test_onnx_model_of_any_size_needs_one_size_for_both_sets(rng, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["emb"], axis=1)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "pool.onnx"))
    # constant images: the channel means are known whatever the resize (values c/255 per channel)
    levels = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    big = np.broadcast_to(levels[:, :, None, None], (6, 3, 8, 8)).copy()
    small = np.broadcast_to(levels[:, :, None, None], (6, 3, 4, 4)).copy()
    save_image_set(tmp_path / "big.npz", ImageSet(big))
    save_image_set(tmp_path / "small.npz", ImageSet(small))
    base = ["measure", "--samples", str(tmp_path / "big.npz"), "--train", str(tmp_path / "small.npz"),
            "--features", str(tmp_path / "pool.onnx"), "--distance", "l2"]
    assert main(base) == 2
    assert "--preprocess size: the model takes any image size, and --samples are 8×8 but --train are 4×4" in \
        capsys.readouterr().err
    out = tmp_path / "m"
    assert main([*base, "--preprocess", "size=4", "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_memorized"] == 6 and d["feature_space"]["size"] == [4, 4]
    from diffmem.measure.encoder import OnnxEncoder, Preprocess

    np.testing.assert_allclose(OnnxEncoder(tmp_path / "pool.onnx", Preprocess(size=(4, 4)))(big),
                               levels / 255.0, rtol=0, atol=1e-6)
