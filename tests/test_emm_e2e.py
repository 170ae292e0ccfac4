"""A tiny end-to-end `diffmem emm` on digits: subset → train with snapshots → sample → measure → report."""

import dataclasses
import io
import itertools
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from diffmem.cli import main
from diffmem.config import (
    EMMConfig,
    MeasureConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    emm_preset,
    from_dict,
    to_dict,
)
from diffmem.nn import build_denoiser
from diffmem.sweep.emm import max_trainings
from diffmem.sweep.search import geometric_grid, next_sizes
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
        ref = binomtest(r["n_memorized"], 32).proportion_ci(confidence_level=0.95, method="wilson")
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
        assert r["n_train"] == r["size"]
    for p in s["points"]:  # each point is the run's best snapshot
        best = max(r["ratio"] for r in train_rows if r["size"] == p["size"])
        assert p["ratio"] == best and p["n_samples"] == 32
    # the bracket is what the measured ratios say about 90 %
    mem = [p["size"] for p in s["points"] if p["ratio"] >= 0.9]
    assert s["bracket"][0] == (max(mem) if mem else None)
    # held-out baseline: the 1,000 digits after each subset in the source's order, measured once per job
    from diffmem.config import DataConfig
    from diffmem.data import make_dataset
    from test_audit import brute

    for p in s["points"]:
        n = p["size"]
        both = make_dataset(DataConfig(size=n + 1000)).images  # nested: the subset, then its held-out digits
        _, _, _, mem = brute(both[n:], both[:n])
        assert p["n_heldout"] == 1000 and p["heldout_ratio"] == pytest.approx(mem.mean())
        assert p["heldout_ci"][0] <= mem.mean() <= p["heldout_ci"][1]
        best = next(r for r in train_rows if r["size"] == n and r["snapshot_kimg"] == p["best_snapshot_kimg"])
        assert p["c_t"] == best["c_t"] is not None
    for r in rows:
        assert r["n_heldout"] == 1000 and r["c_t"] is not None
        if r["kind"] == "optimal":
            assert r["c_t"] < -3  # the optimum's samples are training images: data copying
    assert "C_T (best snapshot)" in (out / "report.md").read_text()

    # samples of every snapshot are kept and match the table's count
    job = out / "jobs" / train_rows[0]["job"]
    with np.load(job / "snapshots" / "000000.320" / "samples.npz", allow_pickle=False) as z:
        assert z["images"].shape == (32, 1, 8, 8) and z["images"].dtype == np.uint8
    assert (out / "report.html").is_file() and (out / "figures" / "ratio_vs_size.png").is_file()
    assert "Resolved configuration" in (out / "report.md").read_text()
    assert (out / "figures" / f"grid-s{sizes[0]}.png").is_file()  # sample | NN₁ | NN₂ of the best snapshot
    assert not list((out / "jobs").rglob("*.png"))  # jobs measure without figures: the report draws the few it shows

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
    assert plan["max_trainings"] == DIGITS_MAX_TRAININGS
    assert from_dict(EMMConfig, plan["config"]) == from_dict(EMMConfig, documented_digits_config())
    assert not (tmp_path / "d").exists()
    # the text result compares the search with a plain grid at the bracket's resolution: sizes 32·1.25^k up to
    # 1,024 need ⌈ln 32 / ln 1.25⌉ = ⌈15.53⌉ = 16 steps, so 17 sizes (the README's "needs 17")
    assert main(["emm", "--preset", "digits", "--out", str(tmp_path / "t"), "--synthetic", "300", "--no-report"]) == 0
    assert "a plain grid at factor 1.25 over 32–1,024 would need 17" in capsys.readouterr().out


# The worst case of the digits preset's search, derived from its rules (docs/EMM.md, "Search") with its
# settings size_min 32, size_max 1,024, grid_factor 2, bracket_factor 1.25, measure_ends, parallel 1:
#   the grid is 32·2^k for k = 0 … 5: 32, 64, 128, 256, 512, 1,024
#   1. both ends first:                                               2 trainings
#   2. binary search over the 4 grid sizes between them: the crossing lies in one of 5 gaps, ⌈log₂ 5⌉ = 3
#   3. bisection in log |D| from a bracket of factor 2 to one ≤ 1.25: 2 → 2^½ = 1.41 → 2^¼ = 1.19, 2 halvings
DIGITS_MAX_TRAININGS = 2 + 3 + 2
# The same search proposing k sizes per round (parallel: k, to keep k workers busy):
#   k = 2: the 4 inner grid sizes are split by 2 of them (64 and 256) into parts of 0, 1 and 1 sizes: 2 + 1 = 3;
#          the bisection puts 2 sizes at the thirds of log 2: 2^⅓ = 1.26 > 1.25, so a second round, 2^⅑ = 1.08:
#          2 + 2 = 4; in all 2 + 3 + 4 = 9
#   k = 3: 3 inner grid sizes (64, 128, 256) leave parts of 0, 0, 0 and 1 sizes: 3 + 1 = 4; the bisection's
#          quarters of log 2 give 2^¼ = 1.19 ≤ 1.25 at once: 3; in all 2 + 4 + 3 = 9
DIGITS_MAX_TRAININGS_PARALLEL = {1: 7, 2: 9, 3: 9}


def _worst_case(size_min, size_max, grid_factor, bracket_factor, parallel, ends):
    """The most sizes the search measures, over every sequence of outcomes (each size memorizes or not, monotone
    or not), and how many outcome sequences there are."""
    worst, leaves = 0, 0
    stack = [{}]
    while stack:
        ratios = stack.pop()
        new = next_sizes(ratios, size_min=size_min, size_max=size_max, threshold=0.9, grid_factor=grid_factor,
                         bracket_factor=bracket_factor, parallel=parallel, ends=ends)
        if not new:
            worst, leaves = max(worst, len(ratios)), leaves + 1
            continue
        stack += [{**ratios, **dict(zip(new, outcome))} for outcome in itertools.product((1.0, 0.0), repeat=len(new))]
    return worst, leaves


def test_the_trainings_bound_is_the_worst_case_of_the_search():
    cfg = emm_preset("digits")
    assert (cfg.size_min, cfg.size_max, cfg.grid_factor, cfg.bracket_factor) == (32, 1024, 2.0, 1.25)
    assert (cfg.measure_ends, cfg.parallel, cfg.repeats, cfg.refine_repeats) == (True, 1, 1, 0)
    assert geometric_grid(32, 1024, 2.0) == [32 * 2**k for k in range(6)]
    for k, derived in DIGITS_MAX_TRAININGS_PARALLEL.items():
        worst, leaves = _worst_case(32, 1024, 2.0, 1.25, k, True)
        assert leaves > 10 and worst == derived  # reached, never exceeded
        assert max_trainings(dataclasses.replace(cfg, parallel=k)) == derived
        assert max_trainings(dataclasses.replace(cfg, parallel=k, repeats=3)) == 3 * derived  # every repeat trains
    assert DIGITS_MAX_TRAININGS_PARALLEL[1] == DIGITS_MAX_TRAININGS == max_trainings(cfg)


@pytest.mark.parametrize("grid", [(64, 1024, 2.0, 1.25), (32, 1024, 2.0, 1.1), (500, 8000, 2.0, 1.25),
                                  (10, 1000, 3.0, 1.2), (100, 100, 2.0, 1.25), (64, 90, 2.0, 1.25)])
@pytest.mark.parametrize("parallel", [1, 2, 3])
@pytest.mark.parametrize("ends", [False, True])
def test_the_trainings_bound_is_reached_and_never_exceeded(grid, parallel, ends):
    worst, _ = _worst_case(*grid, parallel, ends)
    size_min, size_max, grid_factor, bracket_factor = grid
    cfg = EMMConfig(size_min=size_min, size_max=size_max, grid_factor=grid_factor, bracket_factor=bracket_factor,
                    parallel=parallel, measure_ends=ends)
    assert max_trainings(cfg) == worst


def test_the_trainings_bound_holds_with_refined_repeats():
    """refine_repeats: a straddling bracket size gets more repeats, which can move the bracket and restart the
    search. Every sequence of outcomes of every training (from three kinds: clearly memorizing, clearly not, and
    memorizing with an interval that straddles 1 − ε, which pooled with a clear miss straddles and misses) stays
    within the bound, and the worst reaches it; the bound without refinements is exceeded."""
    from diffmem.sweep.emm import next_trainings
    from diffmem.sweep.estimate import RepeatResult

    cfg = EMMConfig(size_min=32, size_max=128, grid_factor=2.0, bracket_factor=1.25, measure_ends=True,
                    refine_repeats=1)
    outcomes = (1000, 0, 905)  # memorized of 1,000: 905 straddles 0.9 at 95 %
    worst, seen = 0, set()

    def explore(runs):
        nonlocal worst
        key = tuple(sorted((s, tuple(r.n_memorized for r in reps.values())) for s, reps in runs.items()))
        if key in seen:
            return
        seen.add(key)
        todo = next_trainings(cfg, runs)
        if not todo:
            worst = max(worst, sum(len(r) for r in runs.values()))
            return
        for ks in itertools.product(outcomes, repeat=len(todo)):
            nxt = {s: dict(r) for s, r in runs.items()}
            for (s, rep), k in zip(todo, ks):
                nxt.setdefault(s, {})[rep] = RepeatResult(rep, k / 1000, k, 1000, 1.0)
            explore(nxt)

    explore({})
    plain = max_trainings(dataclasses.replace(cfg, refine_repeats=0))
    # grid 32, 64, 128 with bisection trees of 3 sizes in each of its 2 gaps: 9 sizes, each at most 1 + 1 runs
    assert max_trainings(cfg) == 9 * 2
    assert plain == 2 + 1 + 2 < worst == max_trainings(cfg)


def documented_digits_config() -> dict:
    """The EMM config file that docs/EMM.md gives as the digits preset."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "EMM.md").read_text()
    section = text.split("## Config")[1].split("## ")[0]
    return json.loads(section.split("```json")[1].split("```")[0])


def test_digits_preset_is_the_documented_recipe():
    cfg = emm_preset("digits")
    assert from_dict(EMMConfig, documented_digits_config()) == cfg
    # the recipe as README.md states it ("What the embedded default finds"), each number checked against the preset
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for claim in ("C = 16, 180k parameters", "Adam lr 2e-3, batch 64, EMA decay 0.99", "3,000 steps (192 kimg)",
                  "a snapshot every 64 kimg", "1,000 Heun samples (18 steps)"):
        assert claim in readme, claim
    model = dataclasses.replace(cfg.model, resolution=8, in_channels=1)  # digits are 1×8×8
    assert cfg.data.source == "digits" and cfg.data.labels == "none" and model.channels == 16
    assert round(sum(p.numel() for p in build_denoiser(model).parameters()), -3) == 180_000
    t = cfg.train
    assert (t.lr, t.batch, t.ema_decay, t.ema_halflife_kimg, t.kimg) == (2e-3, 64, 0.99, None, 192.0)
    assert t.kimg * 1000 / t.batch == 3000  # steps
    assert t.snapshot_kimg == 64.0 and t.snapshot_kimg * 1000 / t.batch == 1000  # a snapshot every 1,000 steps
    assert t.warmup_kimg * 1000 / t.batch == 200  # docs/EMM.md: 200 warm-up steps
    assert (cfg.n_samples, cfg.sample.solver, cfg.sample.steps) == (1000, "heun", 18)


def test_cifar10_preset_is_the_reference_recipe():
    # the reference study's basic setup ("On Memorization in Diffusion Models", TMLR 2025): CIFAR-10, DDPM++
    # width 128 with channel multipliers 2,2,2, 2 blocks, attention at 16×16, dropout 0.13, VP, batch 512,
    # lr 2e-4, 40k epochs, no augmentation, 10,000 samples per measurement
    c = emm_preset("cifar10")
    assert c.data.source.startswith("cifar10:") and c.data.resolution is None and c.n_samples == 10_000
    m = c.model
    assert (m.arch, m.channels, m.channel_mult, m.blocks, m.attn_resolutions) == ("ddpmpp", 128, (2, 2, 2), 2, (16,))
    assert (m.dropout, m.precond, m.embedding) == (0.13, "vp", "positional")
    assert (c.train.batch, c.train.lr, c.train.epochs, c.train.kimg) == (512, 2e-4, 40_000, None)
