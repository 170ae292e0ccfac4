"""Artefacts, config round-trip, image I/O and the CLI's error contract."""

import dataclasses
import json
import math
import subprocess
import sys
import types
import typing

import numpy as np
import pytest

from diffmem import artefacts, config, io
from diffmem.errors import RunError, UsageError


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "x.json"
    artefacts.atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        artefacts.atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_atomic_dir_removes_partial_build(tmp_path):
    final = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with artefacts.atomic_dir(final) as d:
            (d / "half.npz").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with artefacts.atomic_dir(final) as d:
        (d / "whole.npz").write_bytes(b"x")
    assert (final / "whole.npz").exists() and len(list(tmp_path.iterdir())) == 1


def test_a_refused_write_is_a_run_error_and_leaves_nothing(tmp_path, monkeypatch):
    # permission bits do not stop root, so the refusal is injected where the file system would raise it
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    artefacts.atomic_write_json(tmp_path / "m.json", {"old": 1})
    monkeypatch.setattr(artefacts.os, "replace", refuse)
    with pytest.raises(RunError, match="cannot write .*m.json: Permission denied"):
        artefacts.atomic_write_json(tmp_path / "m.json", {"new": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    assert json.loads((tmp_path / "m.json").read_text()) == {"old": 1}


def test_out_directory_rule(tmp_path):
    """The one check of an --out directory that every stage uses: new or empty, or refused in one line."""
    check = artefacts.check_new_dir
    assert check(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()  # checks, creates nothing
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    (tmp_path / "resumable").mkdir()
    (tmp_path / "resumable" / ".lock").write_text("")
    check(tmp_path / "resumable", keep=(".lock",))
    with pytest.raises(UsageError, match=r"^--out: '.*resumable' is not valid; expected a new or empty directory "
                                         r"\(it holds 1 entry: .lock\)$"):
        check(tmp_path / "resumable")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"^--o: '.*file' is not valid; expected X \(it is a file\)$"):
        check(tmp_path / "file", "--o", expected="X")
    artefacts.write_manifest(tmp_path / "art", "dataset", {})
    with pytest.raises(UsageError, match=r"\(it holds a 'dataset' artefact\)$"):
        check(tmp_path / "art")
    for name in "abcde":
        (tmp_path / "many" / name).mkdir(parents=True)
    with pytest.raises(UsageError, match=r"\(it holds 5 entries: a, b, c, …\)$"):
        check(tmp_path / "many")
    # below a regular file the directory cannot be created: a failure (exit 1) naming the file, before any work
    with pytest.raises(RunError, match=r"^--out: cannot create '.*file/a/b': '.*file' is a file, not a directory$"):
        check(tmp_path / "file" / "a" / "b")
    with pytest.raises(RunError, match="is a file, not a directory"):
        artefacts.check_new_file(tmp_path / "file" / "x.npz")
    with pytest.raises(UsageError, match=r"expected a file name \(it is a directory\)$"):
        artefacts.check_new_file(tmp_path / "empty")
    assert artefacts.check_new_file(tmp_path / "file") == tmp_path / "file"  # an existing file is replaced
    with pytest.raises(UsageError, match="it holds 1 entry: x"):  # atomic_dir applies the same rule
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        with artefacts.atomic_dir(tmp_path / "full"):
            pass


def test_manifest_and_completeness(tmp_path):
    cfg = config.DataConfig(size=64)
    assert not artefacts.is_complete(tmp_path, "dataset", cfg)
    artefacts.write_manifest(tmp_path, "dataset", cfg, status="running")
    assert not artefacts.is_complete(tmp_path, "dataset", cfg)
    artefacts.write_manifest(tmp_path, "dataset", cfg)
    assert artefacts.is_complete(tmp_path, "dataset", cfg)
    assert not artefacts.is_complete(tmp_path, "dataset", config.DataConfig(size=65))
    assert not artefacts.is_complete(tmp_path, "run", cfg)


def test_config_hash_is_order_independent():
    assert artefacts.config_hash({"a": 1, "b": [1, 2]}) == artefacts.config_hash({"b": (1, 2), "a": 1})
    assert artefacts.config_hash({"a": 1}) != artefacts.config_hash({"a": 2})


CONFIG_CLASSES = [config.DataConfig, config.ModelConfig, config.TrainConfig, config.SampleConfig,
                  config.MeasureConfig, config.EMMConfig, config.StudyConfig]


def _round_trip(cfg):
    """``cfg`` through the text of a config.json and back."""
    text = json.dumps(config.to_dict(cfg), allow_nan=False)
    return config.from_dict(type(cfg), json.loads(text))


def _typed(v):
    """``v`` with the type of every leaf spelled out, so that 7 and 7.0 or (1,) and [1] compare unequal."""
    if dataclasses.is_dataclass(v):
        return (type(v).__name__, {f.name: _typed(getattr(v, f.name)) for f in dataclasses.fields(v)})
    if isinstance(v, dict):
        return ("dict", {k: _typed(x) for k, x in v.items()})
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, [_typed(x) for x in v])
    return (type(v).__name__, v)


def _other_value(tp, default):
    """A value of type ``tp`` that differs from ``default`` (built here from the type, not from the code)."""
    if dataclasses.is_dataclass(tp):
        return _non_default(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return _other_value(inner, None if default is None else default)
    if origin is tuple:
        if args[1:] == (Ellipsis,):
            samples = {int: (3, 1, 4), float: (0.5, -2.0), bool: (True, False, True)}
            return samples[args[0]]
        return tuple(_other_value(a, None) for a in args)
    if origin is dict:  # StudyConfig.factors: plain, nested-list and grouped values
        return {"model.channels": (8, 16), "model.skip_mask": ((True, False), (False, True)),
                "conditioning": ({"data.labels": "none", "label": "uncond"},
                                 {"data.labels": "random", "data.label_classes": 10})}
    if tp is bool:
        return not default
    if tp is int:
        return 7 if default is None else default + 3
    if tp is float:
        return 0.75 if default is None or not math.isfinite(default) else default * 1.5 + 0.25
    if tp is str:
        return f"{default or 'x'}-other"
    raise AssertionError(f"no non-default value for type {tp!r}")


def _non_default(cls):
    hints = typing.get_type_hints(cls)
    defaults = cls()
    return cls(**{f.name: _other_value(hints[f.name], getattr(defaults, f.name)) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_config_json_round_trip_of_defaults_and_of_every_field_changed(cls):
    assert _round_trip(cls()) == cls()
    cfg = _non_default(cls)
    for f in dataclasses.fields(cls):  # the config really differs from the defaults in every field
        assert getattr(cfg, f.name) != getattr(cls(), f.name), f.name
    back = _round_trip(cfg)
    for f in dataclasses.fields(cls):
        assert _typed(getattr(back, f.name)) == _typed(getattr(cfg, f.name)), f.name
    assert back == cfg


def test_config_json_round_trip_of_every_preset():
    presets = {**{f"model:{k}": v for k, v in config.MODEL_PRESETS.items()},
               **{f"train:{k}": v for k, v in config.TRAIN_PRESETS.items()},
               **{f"emm:{k}": v for k, v in config.EMM_PRESETS.items()}}
    assert len(presets) >= 6
    for name, cfg in presets.items():  # (a preset may hold 40_000 where the field is a float: equal, not typed)
        assert _round_trip(cfg) == cfg, name
    for name, emm in config.EMM_PRESETS.items():
        study = config.StudyConfig(base=emm, factors={"train.kimg": (64.0, 128.0)}, mode="ratio", name=name)
        assert _round_trip(study) == study, name
        # a config written as {"preset": name} resolves to the preset itself
        assert config.from_dict(config.EMMConfig, json.loads(json.dumps({"preset": name}))) == emm


def test_config_rejects_unknown_and_mistyped_keys():
    with pytest.raises(UsageError, match="unknown key 'chanels'"):
        config.from_dict(config.ModelConfig, {"chanels": 3})
    with pytest.raises(UsageError, match="expected an integer"):
        config.from_dict(config.ModelConfig, {"channels": "wide"})
    with pytest.raises(UsageError, match="unknown key 'modle'"):
        config.replace_path(config.EMMConfig(), "modle.channels", 3)


def test_replace_path_sets_nested_values():
    cfg = config.replace_path(config.EMMConfig(), "model.channel_mult", [1, 2])
    assert cfg.model.channel_mult == (1, 2)


def test_npz_round_trip_and_refusals(tmp_path, rng):
    imgs = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    s = io.ImageSet(images=imgs, labels=np.arange(5), seeds=np.arange(5) + 10)
    io.save_image_set(tmp_path / "a.npz", s)
    back = io.load_images(tmp_path / "a.npz")
    assert np.array_equal(back.images, imgs) and back.labels.dtype == np.int64
    assert np.array_equal(back.seeds, np.arange(5) + 10)

    np.savez(tmp_path / "obj.npz", images=np.array([object()], dtype=object))
    with pytest.raises(UsageError, match="object arrays"):
        io.load_images(tmp_path / "obj.npz")
    np.savez(tmp_path / "nan.npz", images=np.full((2, 1, 4, 4), np.nan))
    with pytest.raises(UsageError, match="NaN"):
        io.load_images(tmp_path / "nan.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:50])
    with pytest.raises(UsageError, match="not a readable"):
        io.load_images(tmp_path / "trunc.npz")
    with pytest.raises(UsageError, match="no such file"):
        io.load_images(tmp_path / "missing.npz")


def test_image_folder_loads_and_refuses_mixed_channels(tmp_path, rng):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    s = io.load_images(d)
    assert s.images.shape == (3, 3, 8, 8)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / "3.png")
    with pytest.raises(UsageError, match="grayscale and RGB mixed"):
        io.load_images(d)


def test_pixel_scale_round_trip():
    u = np.arange(256, dtype=np.uint8)
    assert np.array_equal(io.to_uint8(io.to_model_scale(u)).numpy(), u)


def test_cli_bad_option_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "diffmem", "measure", "--no-such-option"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_dir_lock_refuses_a_second_process(tmp_path):
    code = ("import sys, time; from diffmem.artefacts import dir_lock\n"
            "with dir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"in use by another diffmem process \\(pid {holder.pid}\\)"):
            with artefacts.dir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with artefacts.dir_lock(tmp_path):  # a killed holder leaves no stale lock
        pass


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 … 63,000
    Image.fromarray(a16).save(tmp_path / "g16.png")
    got = io.read_image_file(tmp_path / "g16.png")
    assert got.shape == (1, 8, 8)
    assert np.array_equal(got[0], np.round(a16 * 255.0 / 65535).astype(np.uint8))


def test_numpy_nan_and_inf_become_valid_json():
    out = artefacts.to_jsonable({"a": np.float64("nan"), "b": np.float32("inf"), "c": np.int64(3)})
    assert out == {"a": None, "b": "inf", "c": 3}
    json.dumps(out, allow_nan=False)


def test_unexpected_multi_line_errors_are_printed_on_one_line(monkeypatch, capsys):
    from diffmem import cli

    def boom(args):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr("diffmem.cli.report.run", boom)
    assert cli.main(["report", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "first line second line" in err


def test_seed_purposes_are_distinct_and_pinned():
    """One home for the purposes a seed is split into: within a family no two purposes share a stream, and the
    values are the ones runs have always used (changing one would change every draw made from it)."""
    from diffmem import seeds
    from diffmem.train.dataset import DataOrder

    assert seeds.SUBSET_ORDER != seeds.RANDOM_LABELS
    train = [seeds.TRAIN_DATA_ORDER, seeds.TRAIN_NOISE, seeds.TRAIN_DROPOUT, seeds.TRAIN_INIT]
    assert len(set(train)) == len(train) and train == [1, 2, 3, 4]
    assert (seeds.SUBSET_ORDER, seeds.RANDOM_LABELS, seeds.ROW_HASH, seeds.LAW_BOOTSTRAP) == (0, 1, 0x5EED, 0)
    order = DataOrder(n=10, batch=4, seed=7, order="reshuffle")
    ref = np.random.default_rng(np.random.SeedSequence([7, 1, 3])).permutation(10)  # [seed, purpose, epoch]
    assert np.array_equal(order.permutation(3), ref)


def test_the_common_refusal_is_written_by_one_helper():
    """``OPTION: VALUE is not valid; expected …`` comes from errors.bad(), not from hand-written copies, anywhere in
    the package."""
    from pathlib import Path

    import diffmem
    from diffmem.errors import UsageError, bad

    e = bad("--x", "a", "b or c")
    assert isinstance(e, UsageError) and str(e) == "--x: 'a' is not valid; expected b or c" and e.exit_code == 2
    assert str(bad("sigmas", None, "a 1-D schedule", shown="shape (3, 2)")) == \
        "sigmas: shape (3, 2) is not valid; expected a 1-D schedule"
    root = Path(diffmem.__file__).parent
    copies = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py")) if p.name != "errors.py"
              for i, line in enumerate(p.read_text().splitlines(), 1) if "is not valid;" in line]
    assert copies == []
