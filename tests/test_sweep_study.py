"""Studies over factor values (synthetic jobs): expansion, shared jobs, one table with factor columns."""

import csv
import json
from pathlib import Path

import pytest

from diffmem.config import EMMConfig, StudyConfig, TrainConfig, from_dict
from diffmem.errors import UsageError
from diffmem.sweep import SyntheticCurve
from diffmem.sweep.study import expand, run_study, value_slug
from diffmem.sweep.table import read_table

BASE = EMMConfig(n_samples=1000, size_min=32, size_max=1024, optimal=False,
                 train=TrainConfig(kimg=4.0, batch=128, lr=1e-3))


def test_expand_products_and_batch_scales_lr():
    cfg = StudyConfig(base=BASE, factors={"model.channels": (16, 32), "train.batch": (64, 256)})
    plan = expand(cfg)
    assert [f for f, _ in plan] == [{"model.channels": c, "train.batch": b} for c in (16, 32) for b in (64, 256)]
    for f, c in plan:
        assert c.model.channels == f["model.channels"] and c.train.batch == f["train.batch"]
        assert c.train.lr == pytest.approx(1e-3 * f["train.batch"] / 128)
    assert value_slug({"model.skip_mask": (True, False), "data.labels": "random"}) == \
        "model.skip_mask=true+false,data.labels=random"


def test_study_config_from_json_and_errors():
    d = {"name": "w", "mode": "ratio", "factors": {"data.labels": ["none", "unique"]},
         "base": {"sizes": [64, 128], "n_samples": 100}}
    cfg = from_dict(StudyConfig, d)
    assert cfg.factors == {"data.labels": ("none", "unique")} and cfg.base.sizes == (64, 128)
    assert [c.data.labels for _, c in expand(cfg)] == ["none", "unique"]
    with pytest.raises(UsageError, match="base.sizes: mode 'ratio' needs"):
        expand(StudyConfig(base=BASE, mode="ratio"))
    with pytest.raises(UsageError, match="unknown key 'chanels'"):
        expand(StudyConfig(base=BASE, factors={"model.chanels": (1,)}))
    with pytest.raises(UsageError, match="expected an integer"):
        expand(StudyConfig(base=BASE, factors={"model.channels": ("wide",)}))


def test_study_runs_every_value_and_writes_one_table(tmp_path):
    cfg = StudyConfig(base=BASE, factors={"model.channels": (16, 32, 64)}, name="width")
    truth = {16: 90.0, 32: 200.0, 64: 500.0}
    curves = {value_slug({"model.channels": c}): SyntheticCurve(emm=e, noise=False, seed=c) for c, e in truth.items()}
    res = run_study(cfg, tmp_path / "st", synthetic=curves)
    for (f, r), c in zip(res.values, truth):
        lo, hi = r.estimate.bracket
        assert f == {"model.channels": c} and lo <= truth[c] < hi and hi / lo <= 1.25
    s = json.loads((tmp_path / "st" / "study.json").read_text())
    assert [v["factors"]["model.channels"] for v in s["values"]] == [16, 32, 64]
    assert s["n_trainings"] == sum(r.n_trainings for _, r in res.values)
    rows = read_table(tmp_path / "st")
    assert len(rows) == 3 * s["n_trainings"]  # one row per run × snapshot (3 snapshots each)
    assert list(rows[0])[0] == "model.channels"
    with open(tmp_path / "st" / "results.csv") as f:
        assert sorted({r["model.channels"] for r in csv.DictReader(f)}) == ["16", "32", "64"]
    again = run_study(cfg, tmp_path / "st", synthetic=curves)
    assert again.summary()["n_trained_now"] == 0
    assert read_table(tmp_path / "st") == rows


@pytest.mark.slow
def test_study_cli_ratio_mode_end_to_end(tmp_path, capsys):
    """Two widths at one fixed size, trained for real (tiny), through `diffmem study`."""
    import dataclasses

    import torch

    from diffmem.cli import main
    from diffmem.config import to_dict
    from test_emm_e2e import TINY

    base = to_dict(dataclasses.replace(TINY, sizes=(8,), optimal=False))
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"name": "w", "mode": "ratio", "factors": {"model.channels": [4, 8]}, "base": base}))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["study", "--config", str(path), "--out", str(tmp_path / "st"), "--json"]) == 0
    finally:
        torch.set_num_threads(n)
    s = json.loads(capsys.readouterr().out)
    assert [v["factors"] for v in s["values"]] == [{"model.channels": 4}, {"model.channels": 8}]
    assert s["n_trainings"] == 2 and all(len(v["points"]) == 1 and v["points"][0]["size"] == 8 for v in s["values"])
    rows = read_table(tmp_path / "st")
    assert sorted({(r["model.channels"], r["snapshot_kimg"]) for r in rows}) == \
        [("4", 0.32), ("4", 0.64), ("8", 0.32), ("8", 0.64)]
    for v in s["values"]:  # each value's point is its best snapshot
        best = max(r["ratio"] for r in rows if r["model.channels"] == str(v["factors"]["model.channels"]))
        assert v["points"][0]["ratio"] == best
    assert (tmp_path / "st" / "report.html").is_file()


def test_base_may_name_a_preset_and_override_fields():
    from diffmem.config import emm_preset

    cfg = from_dict(StudyConfig, {"mode": "ratio", "factors": {"model.channels": [8]},
                                  "base": {"preset": "digits", "train": {"kimg": 384}, "sizes": [128]}})
    ref = emm_preset("digits")
    assert cfg.base.train.kimg == 384 and cfg.base.sizes == (128,)
    # every other field is the preset's, nested ones included
    assert cfg.base.train.lr == ref.train.lr and cfg.base.train.batch == ref.train.batch
    assert cfg.base.model == ref.model and cfg.base.data == ref.data and cfg.base.n_samples == ref.n_samples
    assert from_dict(EMMConfig, {"preset": "digits"}) == ref
    with pytest.raises(UsageError, match=r"base.preset: 'digitz' is not an EMM preset"):
        from_dict(StudyConfig, {"base": {"preset": "digitz"}})
    with pytest.raises(UsageError, match="unknown key 'kimgs'"):
        from_dict(StudyConfig, {"base": {"preset": "digits", "train": {"kimgs": 1}}})


def test_grouped_factor_sets_several_fields_and_reads_by_its_label():
    from diffmem.sweep.study import value_label

    d = {"mode": "ratio", "base": {"sizes": [64]},
         "factors": {"conditioning": [{"data.labels": "none"},
                                      {"data.labels": "random", "data.label_classes": 10, "label": "random K=10"}]}}
    plan = expand(from_dict(StudyConfig, d))
    (f0, c0), (f1, c1) = plan
    assert (c0.data.labels, c0.data.label_classes) == ("none", None)
    assert (c1.data.labels, c1.data.label_classes) == ("random", 10)
    assert value_label(f0) == "labels=none" and value_label(f1) == "random K=10"
    assert value_slug(f1) == "conditioning=random_K=10"
    assert value_label({"model.channels": 16, "data.labels": "true"}) == "model.channels=16, data.labels=true"
    with pytest.raises(UsageError, match="unknown key 'labelz'"):
        expand(from_dict(StudyConfig, {**d, "factors": {"c": [{"data.labelz": "none"}]}}))


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "studies").glob("*.json")),
                         ids=lambda p: p.name)
def test_committed_study_configs_parse_and_expand(path, capsys, tmp_path):
    """Every config under studies/ loads, expands to valid EMM configs, and dry-runs through the CLI."""
    from diffmem.cli import main
    from diffmem.config import load_json_config

    cfg = load_json_config(StudyConfig, path)
    plan = expand(cfg)
    assert plan and cfg.name == path.stem
    assert len({value_slug(f) for f, _ in plan}) == len(plan)  # one directory per value
    for _, c in plan:
        assert c.sizes and c.n_samples >= 1000 and c.train.kimg > 0
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "st"), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_trainings"] == sum(len(c.sizes) for _, c in plan)
    assert [v["config"]["train"]["kimg"] for v in out["values"]] == [c.train.kimg for _, c in plan]
    assert not (tmp_path / "st").exists()  # a dry run writes nothing


def test_grouped_values_scale_lr_refuse_collisions_and_empty_groups():
    base = {"sizes": [64], "train": {"batch": 128, "lr": 1e-3}}
    d = {"mode": "ratio", "base": base,
         "factors": {"recipe": [{"train.batch": 256, "label": "b256"}, {"train.batch": 256, "train.lr": 5e-4}]}}
    (_, scaled), (_, fixed) = expand(from_dict(StudyConfig, d))
    assert scaled.train.lr == pytest.approx(2e-3) and fixed.train.lr == 5e-4  # lr named in the group: kept
    clash = {**d, "factors": {"g": [{"data.seed": 1}, {"train.seed": 1}]}}
    with pytest.raises(UsageError, match=r"'seed=1' and 'seed=1' would share the directory values/g=seed=1"):
        expand(from_dict(StudyConfig, clash))
    with pytest.raises(UsageError, match=r"factors.g: \{'label': 'x'\} is not valid; expected an object of at"):
        expand(from_dict(StudyConfig, {**d, "factors": {"g": [{"label": "x"}]}}))


def test_study_dry_run_text_names_every_value(tmp_path, capsys):
    from diffmem.cli import main

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "w", "mode": "ratio", "factors": {"model.channels": [8, 16]},
                                "base": {"preset": "digits", "sizes": [64, 128]}}))
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "st"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "study 'w' (ratio mode): 2 factor values, at most 4 trainings" in text
    assert "model.channels=8: at most 2 trainings" in text and "model.channels=16: at most 2 trainings" in text
    assert not (tmp_path / "st").exists()


def test_the_lr_scaled_with_the_batch_is_shown_wherever_the_config_is(tmp_path, capsys):
    """train.batch as a factor scales train.lr: each value's config.json, the dry run (text and JSON) and
    study.json show the lr the value trains with, and why."""
    from diffmem.cli import main

    d = {"name": "batch", "mode": "ratio", "base": {"sizes": [64], "n_samples": 1000, "optimal": False,
                                                     "train": {"kimg": 4.0, "batch": 64, "lr": 2e-3}},
         "factors": {"train.batch": [64, 256]}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(d))
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "train.batch=256: at most 1 trainings; train.lr 0.008 (scaled with train.batch: base lr 0.002 × batch " \
           "256 / base batch 64)" in text
    assert "train.batch=64: at most 1 trainings\n" in text  # the base batch: nothing derived
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "dry"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [v["config"]["train"]["lr"] for v in plan["values"]] == pytest.approx([2e-3, 8e-3])
    assert plan["values"][0]["derived"] == {} and plan["values"][1]["derived"] == {"train.lr": pytest.approx(8e-3)}
    cfg = from_dict(StudyConfig, d)
    run_study(cfg, tmp_path / "st", synthetic={value_slug({"train.batch": b}): SyntheticCurve(noise=False)
                                               for b in (64, 256)})
    for b, lr in ((64, 2e-3), (256, 8e-3)):
        resolved = json.loads((tmp_path / "st" / "values" / f"train.batch={b}" / "config.json").read_text())
        assert resolved["train"]["batch"] == b and resolved["train"]["lr"] == pytest.approx(lr)
    values = json.loads((tmp_path / "st" / "study.json").read_text())["values"]
    assert "derived" not in values[0] and values[1]["derived"] == {"train.lr": pytest.approx(8e-3)}


def test_a_study_directory_resumes_only_its_own_study(tmp_path):
    cfg = StudyConfig(base=BASE, factors={"model.channels": (16,)}, mode="emm", name="w")
    curves = {value_slug({"model.channels": 16}): SyntheticCurve(noise=False)}
    run_study(cfg, tmp_path / "st", synthetic=curves)
    run_study(cfg, tmp_path / "st", synthetic=curves)  # the same study: resumed
    other = StudyConfig(base=BASE, factors={"model.channels": (8,)}, mode="emm", name="w")
    with pytest.raises(UsageError, match=r"holds a study of a different config \(stage 'study'\)"):
        run_study(other, tmp_path / "st", synthetic={value_slug({"model.channels": 8}): SyntheticCurve()})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("")
    with pytest.raises(UsageError, match=r"expected a new directory, or a study directory to resume \(it holds 1 "
                                         r"entry: notes.txt\)"):
        run_study(cfg, tmp_path / "x", synthetic=curves)


def test_a_partial_training_config_reads_the_same_wherever_it_is_written():
    """A duration, warm-up or EMA half-life given in one unit clears the other, and an EMA mode clears the fields it
    does not use, in a preset override in JSON, over the defaults, and in a study's factor values, as on the command
    line (config.implied_train_fields); a field given explicitly is kept."""
    from diffmem.config import emm_preset
    from diffmem.sweep.emm import validate_emm

    c = from_dict(EMMConfig, {"preset": "digits", "train": {"warmup_epochs": 100, "ema_mode": "compensated"}})
    digits = emm_preset("digits").train
    assert (digits.warmup_kimg, digits.ema_decay) == (12.8, 0.99)  # what the override replaces
    assert (c.train.warmup_kimg, c.train.warmup_epochs) == (None, 100.0)
    assert (c.train.ema_mode, c.train.ema_decay, c.train.ema_halflife_epochs) == ("compensated", None, 10.0)
    validate_emm(c)
    c = from_dict(EMMConfig, {"train": {"kimg": 5, "warmup_kimg": 1}})  # over the defaults' 200-epoch warm-up
    assert (c.train.warmup_kimg, c.train.warmup_epochs) == (1.0, None)
    validate_emm(c)
    c = from_dict(EMMConfig, {"preset": "digits", "train": {"epochs": 10, "kimg": 5}})  # both given: kept, refused
    with pytest.raises(UsageError, match=r"^train.kimg: 5.0 is not valid; expected exactly one of"):
        validate_emm(c)
    study = from_dict(StudyConfig, {
        "mode": "ratio", "base": {"preset": "digits", "sizes": [32], "train": {"warmup_epochs": 200}},
        "factors": {"train.warmup_kimg": [6.4], "train.epochs": [50], "train.ema_mode": ["halflife"]}})
    assert (study.base.train.warmup_kimg, study.base.train.warmup_epochs) == (None, 200.0)
    ((_, c),) = expand(study)
    t = c.train
    assert (t.warmup_kimg, t.warmup_epochs, t.kimg, t.epochs) == (6.4, None, None, 50.0)
    assert (t.ema_mode, t.ema_decay, t.ema_halflife_kimg, t.ema_halflife_epochs) == ("halflife", None, None, 10.0)
    validate_emm(c)
    grouped = from_dict(StudyConfig, {"mode": "ratio", "base": {"preset": "digits", "sizes": [32]}, "factors": {
        "ema": [{"train.ema_mode": "halflife", "train.ema_halflife_kimg": 2.0}]}})
    ((_, c),) = expand(grouped)
    assert (c.train.ema_decay, c.train.ema_halflife_kimg, c.train.ema_halflife_epochs) == (None, 2.0, None)


def test_a_study_validates_every_value_before_anything_is_written(tmp_path):
    from diffmem.sweep.study import validate_study

    cfg = StudyConfig(base=BASE, factors={"model.channels": (16, 6, 3)}, name="w")
    with pytest.raises(UsageError, match=r"^value model.channels=3: model.channels: 3 is not valid; expected an "
                                         r"even number ≥ 4$"):
        validate_study(cfg)
    with pytest.raises(UsageError, match=r"^value model.channels=3: model.channels: 3"):
        run_study(cfg, tmp_path / "st", synthetic={})
    assert not (tmp_path / "st").exists()
