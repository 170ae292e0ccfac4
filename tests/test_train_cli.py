"""`diffmem train`: flags override the preset, --dry-run, --json, resume by re-running, one-line errors."""

import json

import numpy as np
import pytest
import torch

from diffmem.cli import main
from diffmem.io import ImageSet, save_image_set

TINY = ["--preset", "digits", "--channels", "8", "--batch", "8", "--kimg", "0.032", "--snapshot-kimg", "0.016",
        "--device", "cpu", "--no-progress", "--threads", "1"]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    save_image_set(p, ImageSet(images=rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8),
                               labels=np.arange(10) % 2))
    return p


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_dry_run_prints_the_resolved_config(data, tmp_path, capsys):
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--skip-mask", "1,0,1,1",
               "--attn-resolutions", "4", "--ema-mode", "halflife", "--ema-halflife-kimg", "2", "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1
    cfg = json.loads(out)
    m, t = cfg["model"], cfg["train"]
    assert (m["resolution"], m["in_channels"], m["label_dim"], m["channels"]) == (8, 1, 2, 8)
    assert m["skip_mask"] == [True, False, True, True] and m["attn_resolutions"] == [4]
    assert (t["kimg"], t["epochs"], t["batch"], t["lr"]) == (0.032, None, 8, 2e-3)  # lr from the preset
    # the mode given: the preset's constant decay goes, the half-life given is kept
    assert (t["ema_mode"], t["ema_decay"], t["ema_halflife_kimg"], t["ema_halflife_epochs"]) == \
        ("halflife", None, 2.0, None)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_train_json_then_rerun_reuses(data, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["steps"], s["kimg"], s["batch"], s["images"]) == (4, 0.032, 8, 10)
    assert s["snapshots_kimg"] == [0.016, 0.032] and np.isfinite(s["last_stats"]["loss"])
    stats = (run / "stats.jsonl").read_text()
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4 and (run / "stats.jsonl").read_text() == stats
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--lr", "5e-4"]) == 2
    err = capsys.readouterr().err
    assert "different config (--lr: 0.002 there vs 0.0005 now)" in err and err.count("\n") == 1  # the flag's name


@pytest.mark.parametrize("flag,value,message", [
    ("--skip-mask", "1,2", "--skip-mask: '1,2' is not valid"),
    ("--skip-mask", "1,1", "--skip-mask: 2 flags is not valid; expected 4 flags, one per skip of this model"),
    ("--precond", "ddim", "--precond: 'ddim' is not valid; expected one of edm, ve, vp"),
    ("--batch-per-device", "3", "--batch-per-device: 3 is not valid; expected a divisor of the 8 images per process "
                                "(--batch 8 / 1 processes)"),
    ("--preset", "huge", "--preset: 'huge' is not a preset"),
    ("--ema-mode", "mode2", "error: --ema-mode: 'mode2' is not valid; expected one of constant, halflife"),
    ("--loss-norm", "avg", "error: --loss-norm: 'avg' is not valid; expected sum"),
    ("--data-order", "window", "error: --data-order: 'window' is not valid; expected fixed"),
    ("--ema-rampup-ratio", "fast", "--ema-rampup-ratio: 'fast' is not valid; expected a number or 'none'"),
    ("--warmup-epochs", "-1", "error: --warmup-epochs: -1.0 is not valid"),
    ("--weight-decay", "nan", "error: --weight-decay: nan is not valid"),
    ("--channel-mult", "1,1,1,1,1", "error: --channel-mult: [1, 1, 1, 1, 1] is not valid; expected at most as "
                                    "many levels as the data's 8×8 images can be halved into (5 levels need a "
                                    "resolution divisible by 16)"),
    ("--betas", "0.9,1.5", "error: --betas: [0.9, 1.5] is not valid; expected Adam's two betas, each in [0, 1)"),
    ("--device", "tpu", "error: --device: 'tpu' is not valid; expected auto, cpu, cuda or cuda:N"),
])
def test_bad_flags_are_one_line_usage_errors(data, tmp_path, capsys, flag, value, message):
    """The library names a field by its config path; diffmem train shows the flag that set it, in the whole line."""
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, flag, value, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert "train." not in err and "model." not in err, err  # no config path left untranslated


@pytest.mark.parametrize("flags,message", [
    (["--ema-mode", "compensated", "--ema-decay", "0.9"],
     "--ema-decay: 0.9 is not valid; expected null: --ema-mode compensated does not use it (set --ema-mode to "
     "constant or final)"),
    (["--ema-halflife-epochs", "10"],  # the digits preset's EMA is constant
     "--ema-halflife-epochs: 10.0 is not valid; expected null: --ema-mode constant does not use a half-life"),
    (["--ema-mode", "final", "--ema-decay", "1"], "--ema-decay: 1.0 is not valid; expected a decay in [0, 1) for "
                                                  "--ema-mode final"),
    (["--ema-mode", "final", "--ema-decay", "0.99999", "--ema-halflife-kimg", "1000"],
     "expected a final decay that keeps β < 1"),
])
def test_ema_options_a_mode_does_not_use_are_refused(data, tmp_path, capsys, flags, message):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_same_bad_value_names_the_flag_or_the_config_path(data, tmp_path, capsys):
    """One rule, two vocabularies: through diffmem train the refusal names --ema-mode; through a study JSON (a
    command without that flag) it names train.ema_mode, the value it came from and the JSON file, and nothing is
    written."""
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--ema-mode", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("diffmem train: error: --ema-mode: 'x' is not valid; expected one of constant, halflife, "
                   "compensated, final\n")
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"name": "s", "mode": "ratio", "factors": {"train.ema_mode": ["constant", "x"]},
                                 "base": {"preset": "digits", "sizes": [32]}}))
    assert main(["study", "--config", str(study), "--out", str(tmp_path / "st"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err == (f"diffmem study: error: {study}: value train.ema_mode=x: train.ema_mode: 'x' is not valid; "
                   "expected one of constant, halflife, compensated, final\n")
    emm = tmp_path / "emm.json"
    emm.write_text(json.dumps({"preset": "digits", "train": {"ema_mode": "x"}}))
    assert main(["emm", "--config", str(emm), "--out", str(tmp_path / "e"), "--no-report"]) == 2
    assert f"diffmem emm: error: {emm}: train.ema_mode: 'x' is not valid" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "st").exists() and not (tmp_path / "e").exists()


def test_the_flag_table_names_options_the_commands_have():
    """Every row of the one table from config paths to flags is an option of its command, and every model and
    training option of diffmem train has a row (so each refusal can be shown as the flag that set the field)."""
    import argparse

    from diffmem.cli import build_parser
    from diffmem.cli.flags import FLAGS, to_flags
    from diffmem.config import ModelConfig, TrainConfig

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command, names in FLAGS.items():
        options = {o for a in sub.choices[command]._actions for o in a.option_strings}
        assert set(names.values()) <= options, (command, set(names.values()) - options)
    fields = {f"model.{f}" for f in ModelConfig.__dataclass_fields__} | \
        {f"train.{f}" for f in TrainConfig.__dataclass_fields__}
    assert {n for n in FLAGS["train"] if "." in n} <= fields
    # the fields diffmem train sets from the data, or has no flag for, keep their config path
    assert to_flags("model.resolution: 6 … train.eps is 0", "train") == "model.resolution: 6 … train.eps is 0"
    assert to_flags("train.lr: -1.0 is not valid; expected … (train.batch 8)", "train") == \
        "--lr: -1.0 is not valid; expected … (--batch 8)"
    assert to_flags("train.lr: -1.0 is not valid", "study") == "train.lr: -1.0 is not valid"
    assert to_flags("run: 'x/train.npz' is a file", "train") == "--out: 'x/train.npz' is a file"


def test_the_paper_preset_resolves_to_the_reference_schedules(data, tmp_path, capsys):
    args = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "paper-basic", "--dry-run",
            "--json"]
    assert main(args) == 0
    t = json.loads(capsys.readouterr().out)["train"]
    assert (t["epochs"], t["batch"], t["lr"], t["warmup_epochs"], t["warmup_kimg"]) == (40_000, 512, 2e-4, 200, None)
    assert (t["ema_mode"], t["ema_halflife_epochs"], t["ema_rampup_ratio"], t["ema_decay"]) == \
        ("compensated", 10, 0.05, None)
    assert (t["loss_norm"], t["data_order"], t["snapshot_kimg"], t["weight_decay"]) == ("sum", "fixed", 2500, 0)
    # the study's EMA table: mode4 with a final decay; the digits preset switched to the default mode
    assert main([*args, "--ema-mode", "final", "--ema-decay", "0.9"]) == 0
    t = json.loads(capsys.readouterr().out)["train"]
    assert (t["ema_mode"], t["ema_decay"], t["ema_halflife_epochs"]) == ("final", 0.9, 10)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--ema-mode", "compensated",
                 "--dry-run", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["train"]
    assert (t["ema_mode"], t["ema_decay"], t["ema_halflife_epochs"], t["ema_halflife_kimg"]) == \
        ("compensated", None, 10, None)


def test_preset_resolution_is_a_library_function():
    """resolve_preset: the preset's recipe with fields replaced; a duration replaces the other one, an EMA
    half-life without a decay replaces the preset's constant decay (the rules --kimg, --epochs and
    --ema-halflife-kimg follow)."""
    from diffmem.config import MODEL_PRESETS, TRAIN_PRESETS, resolve_preset
    from diffmem.errors import UsageError

    assert resolve_preset("digits") == (MODEL_PRESETS["digits"], TRAIN_PRESETS["digits"])
    assert TRAIN_PRESETS["digits"].kimg == 192.0 and TRAIN_PRESETS["digits"].ema_decay == 0.99
    m, t = resolve_preset("digits", {"channels": 8},
                          {"epochs": 3.0, "ema_mode": "halflife", "ema_halflife_kimg": 2.0, "lr": 1e-3})
    assert (m.channels, m.resolution, m.precond) == (8, 8, "edm")
    assert (t.epochs, t.kimg, t.ema_halflife_kimg, t.ema_halflife_epochs, t.ema_decay, t.lr, t.batch) == \
        (3.0, None, 2.0, None, None, 1e-3, 64)
    _, t = resolve_preset("paper-basic", train={"kimg": 5.0, "warmup_kimg": 1.0})
    assert (t.kimg, t.epochs, t.warmup_kimg, t.warmup_epochs) == (5.0, None, 1.0, None)
    _, t = resolve_preset("paper-basic", train={"ema_mode": "final", "ema_decay": 0.5, "ema_halflife_kimg": 1.0})
    assert (t.ema_decay, t.ema_halflife_kimg, t.ema_halflife_epochs) == (0.5, 1.0, None)  # given: kept
    assert TRAIN_PRESETS["paper-basic"].epochs == 40_000
    with pytest.raises(UsageError, match="^preset: 'nope' is not a preset"):
        resolve_preset("nope")
