"""Bad input everywhere: one table over every command. Each row gets exactly one line on stderr naming the
problem, exit code 2 (1 for a failure while running), nothing on stdout, no traceback, and no artefact
in --out."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffmem.cli import main
from diffmem.io import ImageSet, save_image_set
from test_data_sources import write_cifar_python


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input file the table refers to, by name."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    p = {}
    for name, imgs in {"gray8": u8(16, 1, 8, 8), "rgb8": u8(16, 3, 8, 8), "gray16": u8(16, 1, 16, 16)}.items():
        save_image_set(d / f"{name}.npz", ImageSet(images=imgs))
        p[name] = d / f"{name}.npz"
    nan = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    nan[3, 0, 2, 2] = np.nan
    p["nan"] = _npz(d / "nan.npz", images=nan)
    inf = rng.uniform(0, 255, size=(16, 1, 8, 8))
    inf[5, 0, 7, 1] = -np.inf
    p["inf"] = _npz(d / "inf.npz", images=inf)
    p["npy_as_npz"] = d / "npy.npz"
    np.save(open(p["npy_as_npz"], "wb"), u8(16, 1, 8, 8))
    p["int32"] = _npz(d / "int32.npz", images=u8(16, 1, 8, 8).astype(np.int32) + 1000)
    p["five_dims"] = _npz(d / "five_dims.npz", images=u8(16, 1, 1, 8, 8))
    p["empty"] = _npz(d / "empty.npz", images=np.zeros((0, 1, 8, 8), np.uint8))
    p["no_images"] = _npz(d / "no_images.npz", pixels=u8(16, 1, 8, 8))
    p["labels_short"] = _npz(d / "labels_short.npz", images=u8(16, 1, 8, 8), labels=np.zeros(5, np.int64))
    p["labels_float"] = _npz(d / "labels_float.npz", images=u8(16, 1, 8, 8), labels=np.full(16, np.nan))
    (d / "text.npz").write_text("not an archive\n")
    p["text"] = d / "text.npz"
    data = p["gray8"].read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    p["truncated"] = d / "truncated.npz"
    (d / "notes.txt").write_text("hello\n")
    p["txt"] = d / "notes.txt"
    (d / "emptydir").mkdir()
    p["emptydir"] = d / "emptydir"
    (d / "badpng").mkdir()
    from PIL import Image

    Image.fromarray(u8(8, 8)).save(d / "badpng" / "a.png")
    png = (d / "badpng" / "a.png").read_bytes()
    (d / "badpng" / "b.png").write_bytes(png[: len(png) // 2])
    p["badpng"] = d / "badpng"
    (d / "incomplete").mkdir()
    (d / "incomplete" / "manifest.json").write_text(json.dumps({"stage": "dataset", "status": "running"}))
    p["incomplete"] = d / "incomplete"
    with zipfile.ZipFile(d / "good.zip", "w") as z:
        z.writestr("00000/img00000000.png", png)
        z.writestr("dataset.json", json.dumps({"labels": None}))
    data = (d / "good.zip").read_bytes()
    (d / "cut.zip").write_bytes(data[: len(data) - 30])
    p["cut_zip"] = d / "cut.zip"
    write_cifar_python(d / "cifar.tar.gz")
    data = (d / "cifar.tar.gz").read_bytes()
    (d / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    p["cut_cifar"] = d / "cut.tar.gz"
    p["missing"] = d / "does-not-exist"
    for name, cfg in {
        "cfg_unknown": {"n_samples": 10, "colour": "red"},
        "cfg_range": {"epsilon": 1.5},
        "cfg_sizes": {"size_min": 500, "size_max": 100},
        "cfg_type": {"n_samples": "many"},
        "study_unknown": {"name": "w", "mode": "emm", "factors": {"model.colour": [1, 2]}, "base": {}},
        "study_mode": {"name": "w", "mode": "fastest", "factors": {}, "base": {}},
        "study_empty": {"name": "w", "mode": "emm", "factors": {"model.channels": []}, "base": {}},
        "cfg_heldout": {"heldout": -1},
        "cfg_cells": {"preset": "digits", "measure": {"copying_cells": -2}},
        "cfg_no_duration": {"n_samples": 10},
        "cfg_ema_mode": {"preset": "digits", "train": {"ema_mode": "mode2"}},
        "cfg_channels": {"preset": "digits", "model": {"channels": 5}},
        "cfg_levels": {"preset": "digits", "data": {"resolution": 5}},
        "cfg_labels": {"preset": "digits", "data": {"labels": "some"}},
        "cfg_solver": {"preset": "digits", "sample": {"solver": "rk4"}},
        "cfg_threshold": {"preset": "digits", "measure": {"threshold": 0}},
        "cfg_source": {"preset": "digits", "data": {"source": "npz:does-not-exist.npz"}},
        "study_value": {"name": "w", "mode": "ratio", "factors": {"model.channels": [8, 7]},
                        "base": {"preset": "digits", "sizes": [32]}},
    }.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
        p[name] = d / f"{name}.json"
    (d / "broken.json").write_text('{"n_samples": 10,')
    p["broken_json"] = d / "broken.json"
    (d / "list.json").write_text("[1, 2]")
    p["list_json"] = d / "list.json"
    return {k: str(v) for k, v in p.items()}


# (command and arguments with {placeholders}, a needle the one line must hold, exit code)
T = ["--preset", "digits", "--channels", "8", "--kimg", "0.008", "--device", "cpu"]  # a tiny training
S = ["--n", "2", "--steps", "2", "--out", "{out}/s.npz"]  # a tiny sampling
CASES = {
    # data
    "data-missing-npz": (["data", "--source", "npz:{missing}"], "{missing}", 2),
    "data-text-as-npz": (["data", "--source", "npz:{text}"], "{text}: not a .npz archive", 2),
    "data-truncated-npz": (["data", "--source", "npz:{truncated}"], "{truncated}", 2),
    "data-empty-npz": (["data", "--source", "npz:{empty}"], "{empty}", 2),
    "data-nan-npz": (["data", "--source", "npz:{nan}"], "{nan}: 'images' holds NaN or inf", 2),
    "data-int32-npz": (["data", "--source", "npz:{int32}"], "{int32}", 2),
    "data-no-images-key": (["data", "--source", "npz:{no_images}"], "images", 2),
    "data-labels-short": (["data", "--source", "npz:{labels_short}"], "labels", 2),
    "data-labels-float": (["data", "--source", "npz:{labels_float}"], "labels", 2),
    "data-empty-folder": (["data", "--source", "folder:{emptydir}"], "{emptydir}", 2),
    "data-corrupt-png": (["data", "--source", "folder:{badpng}"], "b.png", 2),
    "data-truncated-zip": (["data", "--source", "zip:{cut_zip}"], "{cut_zip}", 2),
    "data-truncated-cifar": (["data", "--source", "cifar10:{cut_cifar}"], "{cut_cifar}", 2),
    "data-unknown-source": (["data", "--source", "mnist"], "--source", 2),
    "data-size-zero": (["data", "--source", "digits", "--size", "0"], "--size", 2),
    "data-size-too-big": (["data", "--source", "digits", "--size", "5000"], "--size", 2),
    "data-classes-too-many": (["data", "--source", "digits", "--classes", "11"], "--classes", 2),
    "data-classes-zero": (["data", "--source", "digits", "--classes", "0"], "--classes", 2),
    "data-resolution-zero": (["data", "--source", "digits", "--resolution", "0"], "--resolution", 2),
    "data-mix-rate-nan": (["data", "--source", "digits", "--mix", "digits", "--mix-rate", "nan"], "--mix-rate", 2),
    "data-label-classes-conflict": (["data", "--source", "digits", "--labels", "none", "--label-classes", "3"],
                                    "--label-classes", 2),
    "data-seed-negative": (["data", "--source", "digits", "--seed", "-1"], "--seed", 2),
    "data-near-threshold": (["data", "--source", "digits", "--near-threshold", "-1"], "--near-threshold", 2),
    "data-size-not-int": (["data", "--source", "digits", "--size", "ten"], "--size", 2),
    # train
    "train-missing-data": (["train", "--data", "{missing}", *T], "{missing}", 2),
    "train-text-data": (["train", "--data", "{txt}", *T], "{txt}", 2),
    "train-truncated-data": (["train", "--data", "{truncated}", *T], "{truncated}", 2),
    "train-empty-data": (["train", "--data", "{empty}", *T], "{empty}", 2),
    "train-nan-data": (["train", "--data", "{nan}", *T], "{nan}: 'images' holds NaN or inf", 2),
    "train-5d-data": (["train", "--data", "{five_dims}", *T], "{five_dims}", 2),
    "measure-5d-samples": (["measure", "--samples", "{five_dims}", "--train", "{gray8}"], "{five_dims}", 2),
    "train-incomplete-artefact": (["train", "--data", "{incomplete}", *T], "{incomplete}", 2),
    "train-corrupt-png": (["train", "--data", "{badpng}", *T], "b.png", 2),
    "train-channels-zero": (["train", "--data", "{gray8}", *T, "--channels", "0"], "--channels", 2),
    "train-batch-zero": (["train", "--data", "{gray8}", *T, "--batch", "0"], "--batch", 2),
    "train-lr-negative": (["train", "--data", "{gray8}", *T, "--lr", "-1"], "--lr", 2),
    "train-lr-nan": (["train", "--data", "{gray8}", *T, "--lr", "nan"], "--lr", 2),
    "train-kimg-zero": (["train", "--data", "{gray8}", *T, "--kimg", "0"], "--kimg", 2),
    "train-kimg-inf": (["train", "--data", "{gray8}", *T, "--kimg", "inf"], "--kimg", 2),
    "train-ema-decay": (["train", "--data", "{gray8}", *T, "--ema-decay", "1.5"], "--ema-decay", 2),
    "train-dropout": (["train", "--data", "{gray8}", *T, "--dropout", "2"], "--dropout", 2),
    "train-precond": (["train", "--data", "{gray8}", *T, "--precond", "ddim"], "--precond", 2),
    "train-skip-mask": (["train", "--data", "{gray8}", *T, "--skip-mask", "1,2"], "--skip-mask", 2),
    "train-skip-mask-length": (["train", "--data", "{gray8}", *T, "--skip-mask", "1,0"], "--skip-mask", 2),
    "train-unknown-preset": (["train", "--data", "{gray8}", *T, "--preset", "huge"], "--preset", 2),
    "train-kimg-and-epochs": (["train", "--data", "{gray8}", *T, "--epochs", "3"], "--epochs", 2),
    "train-batch-per-device": (["train", "--data", "{gray8}", *T, "--batch", "8", "--batch-per-device", "3"],
                               "--batch-per-device", 2),
    "train-threads-zero": (["train", "--data", "{gray8}", *T, "--threads", "0"], "--threads", 2),
    "train-device-unknown": (["train", "--data", "{gray8}", *T, "--device", "tpu"], "--device", 2),
    "train-out-is-a-file": (["train", "--data", "{gray8}", *T, "--out", "{txt}"], "{txt}", 2),
    "train-out-below-a-file": (["train", "--data", "{gray8}", *T, "--out", "{txt}/run"],
                               "--out: cannot create '{txt}/run': '{txt}' is a file, not a directory", 1),
    # sample
    "sample-missing-run": (["sample", "--run", "{missing}", *S], "{missing}", 2),
    "sample-text-run": (["sample", "--run", "{txt}", *S], "{txt}", 2),
    "sample-dataset-as-run": (["sample", "--run", "{gray8}", *S], "{gray8}", 2),
    "sample-missing-optimal": (["sample", "--optimal", "{missing}", *S], "{missing}", 2),
    "sample-empty-optimal": (["sample", "--optimal", "{empty}", *S], "{empty}", 2),
    "sample-nan-optimal": (["sample", "--optimal", "{nan}", *S], "{nan}", 2),
    "sample-n-zero": (["sample", "--optimal", "{gray8}", *S, "--n", "0"], "--n", 2),
    "sample-steps-negative": (["sample", "--optimal", "{gray8}", *S, "--steps", "-1"], "--steps", 2),
    "sample-sigma-order": (["sample", "--optimal", "{gray8}", *S, "--sigma-min", "10", "--sigma-max", "1"],
                           "--sigma", 2),
    "sample-sigma-nan": (["sample", "--optimal", "{gray8}", *S, "--sigma-max", "nan"], "--sigma-max", 2),
    "sample-rho-zero": (["sample", "--optimal", "{gray8}", *S, "--rho", "0"], "--rho", 2),
    "sample-batch-zero": (["sample", "--optimal", "{gray8}", *S, "--batch", "0"], "--batch", 2),
    "sample-label-unconditional": (["sample", "--optimal", "{gray8}", *S, "--label", "3"], "--label", 2),
    "sample-snapshot-without-run": (["sample", "--optimal", "{gray8}", *S, "--snapshot", "1"], "--snapshot", 2),
    "sample-out-not-npz": (["sample", "--optimal", "{gray8}", "--n", "2", "--out", "{out}/s.png"], "--out", 2),
    "sample-run-and-optimal": (["sample", "--optimal", "{gray8}", "--run", "{gray8}", *S], "--run", 2),
    "sample-out-dir-not-empty": (["sample", "--optimal", "{gray8}", "--n", "2", "--out", "{badpng}/"],
                                 "--out: '{badpng}/' is not valid; expected a new or empty directory", 2),
    # measure
    "measure-missing-samples": (["measure", "--samples", "{missing}", "--train", "{gray8}"], "{missing}", 2),
    "measure-missing-train": (["measure", "--samples", "{gray8}", "--train", "{missing}"], "{missing}", 2),
    "measure-text-samples": (["measure", "--samples", "{txt}", "--train", "{gray8}"], "{txt}", 2),
    "measure-truncated-train": (["measure", "--samples", "{gray8}", "--train", "{truncated}"], "{truncated}", 2),
    "measure-empty-samples": (["measure", "--samples", "{empty}", "--train", "{gray8}"], "{empty}", 2),
    "measure-empty-folder": (["measure", "--samples", "{emptydir}", "--train", "{gray8}"], "{emptydir}", 2),
    "measure-corrupt-png": (["measure", "--samples", "{badpng}", "--train", "{gray8}"], "b.png", 2),
    "measure-nan-samples": (["measure", "--samples", "{nan}", "--train", "{gray8}"], "{nan}", 2),
    "measure-inf-train": (["measure", "--samples", "{gray8}", "--train", "{inf}"], "--train: {inf}: 'images' holds NaN",
                          2),
    "measure-npy-as-npz": (["measure", "--samples", "{npy_as_npz}", "--train", "{gray8}"], "not a .npz archive", 2),
    "measure-int32-samples": (["measure", "--samples", "{int32}", "--train", "{gray8}"], "{int32}", 2),
    "measure-channels-mismatch": (["measure", "--samples", "{rgb8}", "--train", "{gray8}"], "--train", 2),
    "measure-resolution-mismatch": (["measure", "--samples", "{gray16}", "--train", "{gray8}"], "--train", 2),
    "measure-threshold-zero": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--threshold", "0"],
                               "--threshold", 2),
    "measure-threshold-nan": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--threshold", "nan"],
                              "--threshold", 2),
    "measure-confidence": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--confidence", "1.5"],
                           "--confidence", 2),
    "measure-memory-zero": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--memory-mb", "0"],
                            "--memory-mb", 2),
    "measure-out-is-a-file": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--out", "{txt}"], "{txt}", 2),
    "measure-resize-zero": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--resize", "0"],
                            "--resize: 0", 2),
    "measure-resize-up": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--resize", "16"],
                          "--samples: --resize: 16 is larger", 2),
    "measure-channels-two": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--channels", "2"],
                             "--channels: 2", 2),
    "measure-resample-unknown": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--resize", "4",
                                  "--resample", "cubic"], "--resample: 'cubic'", 2),
    "measure-tau-range": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--heldout", "{gray8}", "--tau",
                           "2"], "--tau: 2.0", 2),
    "measure-cells-negative": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--heldout", "{gray8}",
                                "--cells", "-1"], "--cells: -1", 2),
    "measure-cells-without-heldout": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--cells", "5"],
                                      "add --heldout", 2),
    "measure-heldout-missing": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--heldout", "{missing}"],
                                "--heldout: {missing}", 2),
    "measure-heldout-shape": (["measure", "--samples", "{gray8}", "--train", "{gray8}", "--heldout", "{gray16}"],
                              "--heldout: images are 1×16×16", 2),
    "measure-cut-zip": (["measure", "--samples", "{gray8}", "--train", "zip:{cut_zip}"], "{cut_zip}", 2),
    "measure-zip-is-a-dir": (["measure", "--samples", "{gray8}", "--train", "zip:{emptydir}"], "is a directory", 2),
    # emm
    "emm-unknown-preset": (["emm", "--preset", "huge"], "--preset", 2),
    "emm-missing-config": (["emm", "--config", "{missing}"], "{missing}", 2),
    "emm-config-is-a-dir": (["emm", "--config", "{emptydir}"], "{emptydir}", 2),
    "emm-broken-json": (["emm", "--config", "{broken_json}"], "{broken_json}", 2),
    "emm-json-not-an-object": (["emm", "--config", "{list_json}"], "{list_json}", 2),
    "emm-unknown-key": (["emm", "--config", "{cfg_unknown}"], "colour", 2),
    "emm-mistyped-key": (["emm", "--config", "{cfg_type}"], "n_samples", 2),
    "emm-epsilon-range": (["emm", "--config", "{cfg_range}"], "epsilon", 2),
    "emm-sizes-order": (["emm", "--config", "{cfg_sizes}"], "size", 2),
    "emm-heldout-negative": (["emm", "--config", "{cfg_heldout}"], "heldout: -1", 2),
    "emm-copying-cells": (["emm", "--config", "{cfg_cells}"], "{cfg_cells}: measure.copying_cells: -2", 2),
    # a whole config is validated before anything is written, each field named by its config path and the file
    "emm-no-duration": (["emm", "--config", "{cfg_no_duration}"], "{cfg_no_duration}: train.kimg: None is not "
                        "valid; expected exactly one of train.kimg and train.epochs", 2),
    "emm-ema-mode": (["emm", "--config", "{cfg_ema_mode}"], "{cfg_ema_mode}: train.ema_mode: 'mode2' is not valid", 2),
    "emm-channels": (["emm", "--config", "{cfg_channels}"], "{cfg_channels}: model.channels: 5 is not valid", 2),
    "emm-levels": (["emm", "--config", "{cfg_levels}"], "{cfg_levels}: model.channel_mult: [1, 2] is not valid; "
                   "expected at most as many levels as the data's 5×5 images can be halved into", 2),
    "emm-labels": (["emm", "--config", "{cfg_labels}"], "{cfg_labels}: data.labels: 'some' is not valid", 2),
    "emm-solver": (["emm", "--config", "{cfg_solver}"], "{cfg_solver}: sample.solver: 'rk4' is not valid", 2),
    "emm-threshold": (["emm", "--config", "{cfg_threshold}"], "{cfg_threshold}: measure.threshold: 0.0 is not valid",
                      2),
    "emm-missing-source": (["emm", "--config", "{cfg_source}"], "{cfg_source}: data.source: "
                           "'npz:does-not-exist.npz': 'does-not-exist.npz' does not exist", 2),
    "emm-n-samples-zero": (["emm", "--preset", "digits", "--n-samples", "0"], "--n-samples", 2),
    "emm-repeats-zero": (["emm", "--preset", "digits", "--repeats", "0"], "--repeats", 2),
    "emm-synthetic-negative": (["emm", "--preset", "digits", "--synthetic", "-5"], "--synthetic", 2),
    "emm-backend-unknown": (["emm", "--preset", "digits", "--backend", "slurm"], "--backend", 2),
    "emm-preset-and-config": (["emm", "--preset", "digits", "--config", "{cfg_unknown}"], "--config", 2),
    # study
    "study-missing-config": (["study", "--config", "{missing}"], "{missing}", 2),
    "study-unknown-key": (["study", "--config", "{cfg_unknown}"], "colour", 2),
    "study-unknown-factor": (["study", "--config", "{study_unknown}"], "factor 'colour'", 2),
    "study-unknown-mode": (["study", "--config", "{study_mode}"], "fastest", 2),
    "study-empty-factor": (["study", "--config", "{study_empty}"], "model.channels", 2),
    "study-broken-json": (["study", "--config", "{broken_json}"], "{broken_json}", 2),
    "study-bad-value": (["study", "--config", "{study_value}"], "{study_value}: value model.channels=7: "
                        "model.channels: 7 is not valid; expected an even number ≥ 4", 2),
    "study-dry-run-bad-value": (["study", "--config", "{study_value}", "--dry-run"], "model.channels: 7 is not valid",
                                2),
    # report
    "report-missing-dir": (["report", "{missing}"], "{missing}", 2),
    "report-a-file": (["report", "{txt}"], "{txt}", 2),
    "report-not-a-sweep": (["report", "{emptydir}"], "{emptydir}", 2),
}
_HAS_OUT = {"data", "train", "emm", "study"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, inputs, tmp_path, capsys):
    argv, needle, code = CASES[case]
    out = tmp_path / "out"
    fill = {**inputs, "out": str(out)}
    argv = [a.format(**fill) for a in argv]
    if argv[0] in _HAS_OUT and "--out" not in argv:
        argv += ["--out", str(out)]
    if argv[0] in ("emm", "study"):
        argv.append("--no-report")
    before = {p: p.stat().st_mtime_ns for p in map(Path, inputs.values()) if p.exists()}
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals (unknown choice, not a number, exclusive options)
        rc = e.code
    r = capsys.readouterr()
    assert rc == code, (argv, r.err)
    assert r.err.count("\n") == 1 and r.err.endswith("\n"), r.err
    assert "Traceback" not in r.err and "failed:" not in r.err, r.err  # an expected error, not a crash
    assert needle.format(**fill) in r.err, r.err
    assert r.out == ""
    assert not out.exists(), sorted(out.rglob("*"))
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before  # inputs untouched


def test_debug_shows_the_traceback(inputs, capsys):
    assert main(["measure", "--samples", inputs["missing"], "--train", inputs["gray8"], "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("diffmem measure: error:")


def test_the_table_covers_every_command():
    from diffmem.cli import COMMANDS

    assert {argv[0] for argv, _, _ in CASES.values()} == set(COMMANDS)


@pytest.mark.parametrize("side", ["--samples", "--train"])
def test_nan_in_float_feature_matrices_is_refused(side):
    """measure() also takes float feature matrices N×D; a NaN or inf in either is refused by name."""
    from diffmem.errors import UsageError
    from diffmem.measure import measure

    f = np.random.default_rng(0).normal(size=(10, 5))
    g = f.copy()
    g[2, 1] = np.nan if side == "--samples" else np.inf
    with pytest.raises(UsageError, match=f"{side}: vectors hold NaN or inf"):
        measure(g, f) if side == "--samples" else measure(f, g)
