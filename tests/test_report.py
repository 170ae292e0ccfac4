"""Reports of EMM and study directories: numbers match the results, figures are real PNGs."""

import dataclasses
import json

import pytest
from PIL import Image

from diffmem.config import EMMConfig, StudyConfig, TrainConfig
from diffmem.errors import UsageError
from diffmem.report import render_report
from diffmem.sweep import SyntheticCurve, run_emm
from diffmem.sweep.study import run_study, value_slug

CFG = EMMConfig(n_samples=1000, size_min=64, size_max=1024, optimal=False, train=TrainConfig(kimg=4.0))


def _png_ok(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_emm_report(tmp_path):
    out = tmp_path / "e"
    with pytest.raises(UsageError, match="not an emm or study directory"):
        render_report(tmp_path)
    res = run_emm(CFG, out, synthetic=SyntheticCurve(emm=300.0, noise=False))
    html = render_report(out)
    md = (out / "report.md").read_text()
    s = json.loads((out / "emm.json").read_text())
    assert f"EMM ≈ **{s['emm']:,.0f}**" in md and f"{s['ci'][0]:,.0f}" in md
    for p in res.points:  # every measured size is in the table with its ratio, flagged when its interval straddles
        row = next(line for line in md.splitlines() if line.startswith(f"| {p.size:,} | {p.ratio:.3f} |"))
        assert row.endswith("| straddles |") == (p.ci[0] < 0.9 <= p.ci[1]), row
    assert any(p.ci[0] < 0.9 <= p.ci[1] for p in res.points)  # the flag is exercised both ways
    assert any(not p.ci[0] < 0.9 <= p.ci[1] for p in res.points)
    for name in ("ratio_vs_size.png", "ratio_vs_progress.png"):
        assert f"figures/{name}" in md and f"figures/{name}" in html.read_text()
        _png_ok(out / "figures" / name)
    assert f"diffmem emm --config {out}/config.json --out {out}" in md
    assert json.loads(md.split("## Resolved configuration\n\n```\n")[1].split("\n```")[0]) == \
        json.loads((out / "config.json").read_text())
    text = html.read_text()
    # the points table and the frontier table (EMM at each of the 3 snapshot budgets)
    assert text.startswith("<!doctype html>") and text.count("<table>") == 2 and "<b>" in text


def test_unfinished_directory_is_refused(tmp_path):
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        run_emm(CFG, out, synthetic=SyntheticCurve(), on_job=lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(UsageError, match="unfinished emm"):
        render_report(out)


def test_study_report(tmp_path):
    cfg = StudyConfig(base=CFG, factors={"model.channels": (16, 32)}, name="width")
    curves = {value_slug({"model.channels": c}): SyntheticCurve(emm=e, noise=False) for c, e in ((16, 100.0),
                                                                                              (32, 400.0))}
    res = run_study(cfg, tmp_path / "st", synthetic=curves)
    render_report(tmp_path / "st")
    md = (tmp_path / "st" / "report.md").read_text()
    assert "## model.channels=16" in md and "## model.channels=32" in md
    for _, r in res.values:
        assert f"EMM ≈ **{r.estimate.emm:,.0f}**" in md
    for name in ("ratio_vs_size.png", "emm_vs_factor.png", "v0-ratio_vs_progress.png", "v1-ratio_vs_progress.png"):
        _png_ok(tmp_path / "st" / "figures" / name)
    assert "diffmem study --config" in md


def test_ratio_study_report_has_ratio_against_factor(tmp_path):
    base = dataclasses.replace(CFG, sizes=(64, 256))
    grouped = ({"data.labels": "none", "label": "uncond"}, {"data.labels": "unique", "label": "unique"})
    cfg = StudyConfig(base=base, mode="ratio", factors={"conditioning": grouped}, name="labels")
    curves = {value_slug({"conditioning": g}): SyntheticCurve(emm=e, noise=False) for g, e in zip(grouped, (100, 900))}
    run_study(cfg, tmp_path / "st", synthetic=curves)
    (tmp_path / "st" / "figures").mkdir()
    (tmp_path / "st" / "figures" / "stale.png").write_bytes(b"from an earlier rendering")
    render_report(tmp_path / "st")
    assert not (tmp_path / "st" / "figures" / "stale.png").exists()
    md = (tmp_path / "st" / "report.md").read_text()
    assert "## uncond" in md and "## unique" in md
    _png_ok(tmp_path / "st" / "figures" / "ratio_vs_factor.png")
    _png_ok(tmp_path / "st" / "figures" / "ratio_vs_size.png")  # two sizes: the curve per value
    assert not (tmp_path / "st" / "figures" / "emm_vs_factor.png").exists()
    s = json.loads((tmp_path / "st" / "study.json").read_text())
    assert "ratio at \\|D\\| = 64 (95 % interval)" in md and "ratio at \\|D\\| = 256 (95 % interval)" in md
    for v in s["values"]:  # one table row per value with its measured ratios
        cells = [f"{p['ratio']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]" for p in v["points"]]
        label = "uncond" if v["factors"]["conditioning"]["data.labels"] == "none" else "unique"
        assert f"| {label} | {cells[0]} | {cells[1]} |" in md


def test_every_figure_is_drawn_on_agg_and_written_whole(tmp_path):
    from diffmem.plotting import pyplot, save_png

    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([0, 1], [0, 1])
    n_open = len(plt.get_fignums())
    path = save_png(fig, tmp_path / "f.png")
    assert len(plt.get_fignums()) == n_open - 1  # closed once written
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (400, 300)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary left beside it


def test_captions_and_intervals_follow_epsilon_and_confidence(tmp_path, capsys):
    """ε = 0.2 and measure.confidence = 0.8: the report, its figures' captions and the terminal lines say 80 %,
    never the defaults' 90 % line or 95 % intervals."""
    from diffmem.cli import main
    from diffmem.config import MeasureConfig, to_dict

    curve = SyntheticCurve(emm=300.0, threshold=0.8, noise=False)
    cfg = dataclasses.replace(CFG, epsilon=0.2, measure=MeasureConfig(confidence=0.8))
    path = tmp_path / "emm.json"
    path.write_text(json.dumps(to_dict(cfg)))
    out = tmp_path / "e"
    run_emm(cfg, out, synthetic=curve)
    render_report(out)
    md = (out / "report.md").read_text()
    assert "(80 % interval [" in md and "memorizes ≥ 80 %" in md and "| 80 % interval |" in md
    assert "Memorization ratio against |D| (80 % intervals), the 80 % line" in md
    assert "budget (kimg) | EMM (training images) | 80 % interval" in md  # the frontier table
    assert "intervals at 80 % confidence" in md
    assert "95 %" not in md and "90 %" not in md and "90%" not in md and "95%" not in md
    # the command line prints the same levels
    assert main(["emm", "--config", str(path), "--out", str(tmp_path / "cli"), "--synthetic", "300",
                 "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "80 % interval [" in text and "crosses 80 %" in text and "95" not in text.split("wall time")[0]

    study = StudyConfig(base=CFG, factors={"measure.confidence": (0.5, 0.99)}, name="levels")
    run_study(study, tmp_path / "st", synthetic={value_slug({"measure.confidence": c}): SyntheticCurve(noise=False)
                                                  for c in (0.5, 0.99)})
    render_report(tmp_path / "st")
    md = (tmp_path / "st" / "report.md").read_text()
    section = {c: md.split(f"## measure.confidence={c}")[1].split("## ")[0] for c in (0.5, 0.99)}
    assert "(50 % interval [" in section[0.5] and "| 50 % interval |" in section[0.5]
    assert "(99 % interval [" in section[0.99] and "| 99 % interval |" in section[0.99]
    assert "95 % interval (the base's; each value's own in its section)" in md  # the values differ: said so
