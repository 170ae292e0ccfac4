"""A tiny end-to-end `diffmem emm` on digits: subset → train with snapshots → sample → measure → report."""

import dataclasses
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from diffmem.cli import main
from diffmem.config import EMMConfig, MeasureConfig, ModelConfig, SampleConfig, TrainConfig, to_dict
from diffmem.sweep.estimate import wilson
from diffmem.sweep.table import read_table

TINY = EMMConfig(
    model=ModelConfig(resolution=8, in_channels=1, channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(),
                      dropout=0.0, precond="edm"),
    train=TrainConfig(kimg=0.64, batch=16, lr=2e-3, warmup_kimg=0.16, warmup_epochs=None, ema_mode="constant",
                      ema_decay=0.9, ema_halflife_epochs=None,
                      ema_rampup_ratio=None, snapshot_kimg=0.32, device="cpu"),
    sample=SampleConfig(steps=4, device="cpu"),
    measure=MeasureConfig(device="cpu"),
    n_samples=32, size_min=8, size_max=64, grid_factor=8.0, bracket_factor=8.0,
)


@pytest.mark.slow
def test_tiny_emm_end_to_end(tmp_path):
    cfg_path = tmp_path / "emm.json"
    cfg_path.write_text(json.dumps(to_dict(TINY)))
    out = tmp_path / "emm"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["emm", "--config", str(cfg_path), "--out", str(out), "--json"]) == 0
    text = buf.getvalue()
    assert text.count("\n") == 1  # exactly one JSON object on stdout
    s = json.loads(text)
    assert sorted(s) == ["bracket", "ci", "emm", "n_trainings", "optimal", "points", "wall_s"]
    sizes = [p["size"] for p in s["points"]]
    assert set(sizes) <= {8, 64} and s["n_trainings"] == len(sizes) >= 1
    # the closed-form optimum lands on training images: every sample memorized
    assert s["optimal"] == {str(n): 1.0 for n in sizes}
    rows = read_table(out)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 2 * len(sizes)  # snapshots at 0.32 and 0.64 kimg
    assert sorted({r["snapshot_kimg"] for r in train_rows}) == [0.32, 0.64]
    for r in rows:
        assert r["n_samples"] == 32 and r["ratio"] == r["n_memorized"] / 32
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson(r["n_memorized"], 32))
        assert r["n_train"] == r["size"]
    for p in s["points"]:  # each point is the run's best snapshot
        best = max(r["ratio"] for r in train_rows if r["size"] == p["size"])
        assert p["ratio"] == best and p["n_samples"] == 32
    # the bracket is what the measured ratios say about 90 %
    mem = [p["size"] for p in s["points"] if p["ratio"] >= 0.9]
    assert s["bracket"][0] == (max(mem) if mem else None)
    # samples of every snapshot are kept and match the table's count
    job = out / "jobs" / train_rows[0]["job"]
    with np.load(job / "snapshots" / "000000.320" / "samples.npz", allow_pickle=False) as z:
        assert z["images"].shape == (32, 1, 8, 8) and z["images"].dtype == np.uint8
    assert (out / "report.html").is_file() and (out / "figures" / "ratio_vs_size.png").is_file()
    assert "Resolved configuration" in (out / "report.md").read_text()
    assert (out / "figures" / f"grid-s{sizes[0]}.png").is_file()  # sample | NN₁ | NN₂ from the measurement

    # rerunning resumes: nothing is trained again, the same table comes back
    table = (out / "results.jsonl").read_text()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["emm", "--config", str(cfg_path), "--out", str(out), "--no-report"]) == 0
    assert f"trainings: {len(sizes)} (0 run now" in buf.getvalue()
    assert (out / "results.jsonl").read_text() == table


def test_emm_cli_errors(tmp_path, capsys):
    assert main(["emm", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--preset: 'nope' is not an EMM preset" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_sample": 3}))
    assert main(["emm", "--config", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "unknown key 'n_sample'" in capsys.readouterr().err
    assert main(["emm", "--preset", "digits", "--out", str(tmp_path / "z"), "--n-samples", "0"]) == 2
    assert "--n-samples: 0 is not valid" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an emm or study directory" in capsys.readouterr().err


def test_emm_cli_synthetic_json_and_dry_run(tmp_path, capsys):
    assert main(["emm", "--preset", "digits", "--out", str(tmp_path / "s"), "--synthetic", "300", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    lo, hi = s["bracket"]
    assert lo <= 300 < hi and hi / lo <= 1.25 and s["ci"][0] < s["emm"] < s["ci"][1]
    assert [p["size"] for p in s["points"]][:1] == [32] and s["points"][-1]["size"] == 1024  # both ends measured
    assert main(["emm", "--preset", "digits", "--out", str(tmp_path / "d"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["max_trainings"] == 7 and plan["config"]["n_samples"] == 1000
    assert not (tmp_path / "d").exists()


def test_presets_resolve():
    from diffmem.config import EMM_PRESETS

    assert EMM_PRESETS["digits"].data.source == "digits" and EMM_PRESETS["digits"].n_samples == 1000
    c = EMM_PRESETS["cifar10"]
    assert (c.model.channels, c.model.blocks, c.model.precond, c.train.batch) == (128, 2, "vp", 512)
    assert dataclasses.replace(c, n_samples=5).n_samples == 5
