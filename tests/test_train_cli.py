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
               "--attn-resolutions", "4", "--ema-halflife-kimg", "2", "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1
    cfg = json.loads(out)
    m, t = cfg["model"], cfg["train"]
    assert (m["resolution"], m["in_channels"], m["label_dim"], m["channels"]) == (8, 1, 2, 8)
    assert m["skip_mask"] == [True, False, True, True] and m["attn_resolutions"] == [4]
    assert (t["kimg"], t["epochs"], t["batch"], t["lr"]) == (0.032, None, 8, 2e-3)  # lr from the preset
    assert (t["ema_decay"], t["ema_halflife_kimg"]) == (None, 2.0)  # the half-life replaces the preset's decay
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
    assert "different config (train.lr: 0.002 there vs 0.0005 now)" in err and err.count("\n") == 1


@pytest.mark.parametrize("flag,value,message", [
    ("--skip-mask", "1,2", "--skip-mask: '1,2' is not valid"),
    ("--skip-mask", "1,1", "--skip-mask: 2 flags given; this model has 4 skips"),
    ("--precond", "ddim", "--precond: 'ddim' is not valid; expected one of edm, ve, vp"),
    ("--batch-per-device", "3", "--batch-per-device: 3 is not valid"),
    ("--preset", "huge", "--preset: 'huge' is not a preset"),
])
def test_bad_flags_are_one_line_usage_errors(data, tmp_path, capsys, flag, value, message):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, flag, value, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_preset_resolution_is_a_library_function():
    """resolve_preset: the preset's recipe with fields replaced; a duration replaces the other one, an EMA
    half-life without a decay replaces the preset's constant decay (the rules --kimg, --epochs and
    --ema-halflife-kimg follow)."""
    from diffmem.config import MODEL_PRESETS, TRAIN_PRESETS, resolve_preset
    from diffmem.errors import UsageError

    assert resolve_preset("digits") == (MODEL_PRESETS["digits"], TRAIN_PRESETS["digits"])
    assert TRAIN_PRESETS["digits"].kimg == 192.0 and TRAIN_PRESETS["digits"].ema_decay == 0.99
    m, t = resolve_preset("digits", {"channels": 8}, {"epochs": 3.0, "ema_halflife_kimg": 2.0, "lr": 1e-3})
    assert (m.channels, m.resolution, m.precond) == (8, 8, "edm")
    assert (t.epochs, t.kimg, t.ema_halflife_kimg, t.ema_decay, t.lr, t.batch) == (3.0, None, 2.0, None, 1e-3, 64)
    _, t = resolve_preset("paper-basic", train={"kimg": 5.0, "ema_decay": 0.5, "ema_halflife_kimg": 1.0})
    assert (t.kimg, t.epochs, t.ema_decay, t.ema_halflife_kimg) == (5.0, None, 0.5, 1.0)  # both EMA fields: kept
    assert TRAIN_PRESETS["paper-basic"].epochs == 40_000
    with pytest.raises(UsageError, match="--preset: 'nope' is not a preset"):
        resolve_preset("nope")
