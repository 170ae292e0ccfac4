"""The memorization frontier (EMM at every budget), the frontier search and the fitted law, on known answers."""

import dataclasses
import json
import math

import numpy as np
import pytest

from diffmem import fmt
from diffmem.config import EMMConfig, TrainConfig, emm_preset
from diffmem.errors import UsageError
from diffmem.sweep import SyntheticCurve, run_emm
from diffmem.sweep.estimate import wilson
from diffmem.sweep.frontier import bracket_ok, frontier, frontier_budgets, next_runs
from diffmem.sweep.law import Onset, fit_law, law_lines, law_report, onsets
from diffmem.sweep.search import find_bracket, next_sizes
from diffmem.sweep.table import read_table

T = 0.9
N = 1000
BUDGETS = [64.0 * i for i in range(1, 13)]
CFG = EMMConfig(n_samples=N, size_min=32, size_max=1024, optimal=False, measure_ends=True, frontier=True,
                train=TrainConfig(kimg=768.0, snapshot_kimg=64.0, batch=64))


def _row(size, kimg, ratio, repeat=0, n=N):
    return {"kind": "train", "size": size, "repeat": repeat, "snapshot_kimg": kimg, "n_memorized": round(ratio * n),
            "n_samples": n}


def _log_crossing(s0, r0, s1, r1, t=T):
    """Where the line through (log s0, r0) and (log s1, r1) meets t, written out."""
    return s0 * (s1 / s0) ** ((r0 - t) / (r0 - r1))


def test_synthetic_surface_knows_its_frontier_and_onsets():
    c = SyntheticCurve(emm=400.0, slope=4.0, threshold=T, snapshots_kimg=tuple(BUDGETS), growth=0.8)
    for kimg in BUDGETS:
        assert c.expected(c.emm_at(kimg), kimg) == pytest.approx(T)
        assert c.emm_at(kimg) == pytest.approx(400.0 * (kimg / 768.0) ** 0.8)
    for size in (50.0, 200.0, 400.0):
        assert c.expected(size, c.onset(size)) == pytest.approx(T)
        assert c.onset(size) == pytest.approx(768.0 * (size / 400.0) ** (1 / 0.8))  # α = 1 / growth


def test_frontier_by_hand_exact_lower_bound_and_unknown_points():
    rows = [_row(10, 1.0, 0.95),                                  # memorized, then stopped
            _row(20, 1.0, 0.50), _row(20, 2.0, 0.92),             # memorizes at 2, then stopped
            _row(40, 1.0, 0.10),                                  # not memorized by 1, then stopped: unknown later
            _row(80, 1.0, 0.0), _row(80, 2.0, 0.30), _row(80, 3.0, 0.60)]
    f1, f2, f3 = frontier(rows, T)
    assert [b.kimg for b in (f1, f2, f3)] == [1.0, 2.0, 3.0]
    # budget 1: every run reached it; exact points
    assert [p.size for p in f1.points] == [10, 20, 40, 80] and f1.partial == ()
    assert f1.estimate.bracket == (10, 20) and f1.estimate.emm == pytest.approx(_log_crossing(10, 0.95, 20, 0.5))
    # budget 2: size 10 memorizes (a lower bound), size 40 says nothing, size 20 is exact
    assert [p.size for p in f2.points] == [10, 20, 80] and f2.partial == (10,)
    assert f2.estimate.bracket == (20, 80) and f2.estimate.emm == pytest.approx(_log_crossing(20, 0.92, 80, 0.30))
    p10 = f2.points[0]
    assert p10.ci[1] == 1.0 and p10.ratio == pytest.approx(0.95) and p10.n_memorized == 950
    assert p10.ci[0] == pytest.approx(max(wilson(950, N, 0.95)[0], wilson(920, N, 0.95)[0]))
    # budget 3: sizes 10 and 20 are lower bounds; 20's interval reaches 1; 10 is raised to 20's lower end
    assert f3.partial == (10, 20) and f3.estimate.bracket == (20, 80)
    assert f3.points[1].ci == pytest.approx((max(wilson(920, N, 0.95)[0], wilson(600, N, 0.95)[0]), 1.0))
    assert f3.estimate.emm == pytest.approx(_log_crossing(20, 0.92, 80, 0.60))
    s = f2.summary()
    assert s["epochs_at_emm"] == pytest.approx(2.0 * 1000 / s["emm"])
    assert [p["lower_bound"] for p in s["points"]] == [True, False, False]


def test_frontier_equals_brute_force_on_random_equal_length_runs(rng):
    sizes, snaps = [16, 32, 64, 128, 256], [1.0, 2.0, 3.0, 4.0]
    rows = []
    for s in sizes:
        for rep in range(2):
            base = rng.uniform(0, 1, len(snaps))
            rows += [_row(s, k, float(b), rep) for k, b in zip(snaps, base)]
    for b in frontier(rows, T):
        assert b.partial == ()
        for p in b.points:  # brute force: per repeat the best snapshot up to the budget, counts pooled
            mine = [r for r in rows if r["size"] == p.size and r["snapshot_kimg"] <= b.kimg]
            best = [max((r for r in mine if r["repeat"] == rep), key=lambda r: r["n_memorized"]) for rep in range(2)]
            assert p.n_memorized == sum(r["n_memorized"] for r in best) and p.n_samples == 2 * N
        ratios = {p.size: p.ratio for p in b.points}
        assert b.estimate.bracket == tuple(find_bracket(ratios, T).__dict__.values())


def test_next_runs_lengths_double_and_stop_once_known():
    budgets = [1.0, 2.0, 3.0, 4.0]
    kw = dict(size_min=32, size_max=1024, threshold=T, ends=True)
    assert next_runs([], budgets, **kw) == {32: 1.0, 1024: 1.0}  # the smallest budget asking
    assert next_runs([], budgets, staged=False, **kw) == {32: 4.0, 1024: 4.0}  # straight to the largest
    rows = [_row(32, 1.0, 1.0), _row(1024, 1.0, 0.0)]
    # 32 memorizes at 1: known at every budget; 1024 is unknown beyond 1 and doubles to 2 for budgets 2–4 (they
    # measure both ends first); budget 1 goes on with the middle of the grid 64, 128, 256, 512
    assert next_runs(rows, budgets, **kw) == {128: 1.0, 1024: 2.0}
    rows += [_row(128, 1.0, 0.0), _row(1024, 2.0, 0.0)]
    # budget 1 halves its bracket (32, 128); budget 2 has both ends and asks for 128 at 2, which doubles its run;
    # 1024 doubles again for budgets 3 and 4
    assert next_runs(rows, budgets, **kw) == {64: 1.0, 128: 2.0, 1024: 4.0}


def _per_budget_trainings(curve, budgets, size_min, size_max):
    """One independent EMM search per budget (each run to its budget), counted."""
    total = 0
    for B in budgets:
        ratios = {}
        while new := next_sizes(ratios, size_min=size_min, size_max=size_max, threshold=T, ends=True):
            ratios.update({s: max(round(N * curve.expected(s, k)) / N for k in budgets if k <= B) for s in new})
        total += len(ratios)
    return total


@pytest.mark.parametrize("emm,growth", [(450.0, 1.0), (900.0, 1.25), (300.0, 0.8)])
def test_frontier_search_brackets_every_budget_with_fewer_trainings(tmp_path, emm, growth):
    curve = SyntheticCurve(emm=emm, slope=4.0, threshold=T, snapshots_kimg=tuple(BUDGETS), growth=growth, noise=False)
    res = run_emm(CFG, tmp_path / "f", synthetic=curve)
    assert [b.kimg for b in res.frontier] == BUDGETS == frontier_budgets(CFG.train)
    for b in res.frontier:  # bracketed at every budget, around the true EMM there (or rightly out of range)
        truth = curve.emm_at(b.kimg)
        lo, hi = b.estimate.bracket
        assert bracket_ok(b, CFG.bracket_factor)
        assert (lo is None or lo <= truth) and (hi is None or truth < hi), (b.kimg, truth, lo, hi)
        assert (lo is None) == (truth < CFG.size_min)
    # the final budget's estimate is the result's
    assert res.estimate == res.frontier[-1].estimate and res.points == list(res.frontier[-1].points)
    # the table holds each size's longest run only: one row per snapshot, every budget up to its length
    rows = read_table(tmp_path / "f")
    by_size = {}
    for r in rows:
        by_size.setdefault(r["size"], []).append(r["snapshot_kimg"])
    for ks in by_size.values():
        assert ks == BUDGETS[:len(ks)]
    assert res.training_kimg == sum(max(ks) for ks in by_size.values())
    runs = len(by_size)
    assert runs < res.n_trainings  # some runs were extended
    baseline = _per_budget_trainings(curve, BUDGETS, CFG.size_min, CFG.size_max)
    assert res.n_trainings < baseline / 2
    assert res.training_kimg < 0.4 * sum(BUDGETS) * baseline / len(BUDGETS)
    # the law recovers α = 1 / growth
    fit = res.law["fit"]
    assert fit["alpha"] == pytest.approx(1 / growth, rel=0.08)
    assert res.law["holdout"]["within_tolerance"]


def test_frontier_search_resumes_after_a_kill(tmp_path):
    curve = SyntheticCurve(emm=450.0, threshold=T, snapshots_kimg=tuple(BUDGETS), growth=1.0)
    full = run_emm(CFG, tmp_path / "full", synthetic=curve)
    seen = []

    def kill(spec, reused):
        seen.append(spec.key)
        if len(seen) == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_emm(CFG, tmp_path / "e", synthetic=curve, on_job=kill)
    again = run_emm(CFG, tmp_path / "e", synthetic=curve)
    assert again.n_trained_now == full.n_trainings - 9 and again.n_trainings == full.n_trainings
    assert json.loads((tmp_path / "e" / "emm.json").read_text())["frontier"] == \
        json.loads((tmp_path / "full" / "emm.json").read_text())["frontier"]


def test_plain_search_reports_its_frontier_too(tmp_path):
    curve = SyntheticCurve(emm=300.0, slope=4.0, threshold=T, snapshots_kimg=(1.0, 2.0, 4.0), noise=False)
    cfg = EMMConfig(n_samples=N, size_min=64, size_max=1024, optimal=False, train=TrainConfig(kimg=4.0))
    res = run_emm(cfg, tmp_path / "e", synthetic=curve)
    assert [b.kimg for b in res.frontier] == [1.0, 2.0, 4.0]
    assert res.frontier[-1].estimate == res.estimate  # the final budget is the search's own EMM
    d = json.loads((tmp_path / "e" / "emm.json").read_text())
    assert [b["kimg"] for b in d["frontier"]] == [1.0, 2.0, 4.0] and "law" in d
    assert "frontier" not in res.summary()  # --json keeps its keys outside frontier mode
    for b in res.frontier:  # every size's ratio at a budget is its snapshot there (the curve only rises)
        for p in b.points:
            assert p.ratio == round(N * curve.expected(p.size, b.kimg)) / N


def test_onsets_interpolate_in_log_budget_and_censor_the_ends():
    rows = [_row(10, 1.0, 0.95), _row(10, 2.0, 1.0),                     # at 1 − ε from its first snapshot
            _row(20, 1.0, 0.5), _row(20, 2.0, 0.8), _row(20, 4.0, 0.95),  # crosses between 2 and 4
            _row(40, 1.0, 0.0), _row(40, 2.0, 0.1), _row(40, 4.0, 0.5)]  # never
    ons = {o.size: o for o in onsets(frontier(rows, T), T)}
    assert ons[10] == Onset(10, None, None, 1.0)
    assert ons[40] == Onset(40, None, 4.0, None)
    assert ons[20].below == 2.0 and ons[20].above == 4.0
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    w = (logit(0.9) - logit(0.8)) / (logit(0.95) - logit(0.8))  # how far 0.9 lies from 0.8 to 0.95 in logit
    assert ons[20].kimg == pytest.approx(2.0 * 2 ** w)  # … and as far from 2 to 4 kimg in log budget
    # a ratio of 0 or 1 is clipped to 1/2n from the end: 0.0 → 1.0 crosses where logit 0.9 lies between ±logit(1/2n)
    one = onsets(frontier([_row(30, 1.0, 0.0), _row(30, 2.0, 1.0)], T), T)[0]
    w = (logit(0.9) - logit(0.5 / N)) / (logit(1 - 0.5 / N) - logit(0.5 / N))
    assert one.kimg == pytest.approx(2 ** w)
    # a ratio exactly at 1 − ε crosses at that snapshot, never past it (exp∘log rounds 576 up to 576.0000000000001)
    at = onsets(frontier([_row(215, 512.0, 0.844), _row(215, 576.0, 0.9)], T), T)[0]
    assert at == Onset(215, 576.0, 512.0, 576.0)
    assert math.exp(math.log(512.0) + 1.0 * (math.log(576.0) - math.log(512.0))) > 576.0  # what the clamp is for


def test_fit_recovers_an_exact_power_law():
    ons = [Onset(s, 3.0 * s ** 1.5, None, None) for s in (10, 20, 40, 80, 160)]
    law = fit_law(ons)
    assert law.alpha == pytest.approx(1.5, abs=1e-12) and law.a == pytest.approx(3.0, rel=1e-12)
    assert law.alpha_ci == pytest.approx((1.5, 1.5), abs=1e-9)
    assert law.emm(3.0 * 50 ** 1.5) == pytest.approx(50.0)
    assert law.emm_ci(300.0) == pytest.approx(((300 / 3) ** (1 / 1.5),) * 2)
    assert fit_law(ons[:1]) is None
    assert fit_law(ons[:4]).alpha_ci is None and fit_law(ons[:4]).emm_ci(300.0) is None  # the bootstrap needs 5
    assert fit_law(ons[:2]).alpha == pytest.approx(1.5)
    flat = fit_law([Onset(s, 5.0 * s ** 0.001, None, None) for s in (10, 20, 40, 80, 160)])
    assert flat.emm(1e6) is None and flat.emm_ci(1e6) is None  # (10⁶ / 5)^1000: no number, not an infinity


def test_fit_and_bootstrap_match_numpy_polyfit_brute_force():
    rng = np.random.default_rng(3)
    sizes = np.geomspace(20, 500, 9).round().astype(int)
    taus = 2.0 * sizes ** 1.1 * np.exp(rng.normal(0, 0.15, len(sizes)))
    ons = [Onset(int(s), float(t), None, None) for s, t in zip(sizes, taus)]
    law = fit_law(ons, n_boot=500, seed=7)
    slope, icept = np.polyfit(np.log(sizes), np.log(taus), 1)
    assert law.alpha == pytest.approx(slope, rel=1e-10) and law.a == pytest.approx(math.exp(icept), rel=1e-10)
    # the same resamples, refitted one by one with polyfit
    idx = np.random.default_rng(7).integers(0, len(sizes), size=(500, len(sizes)))
    ref = [np.polyfit(np.log(sizes[i]), np.log(taus[i]), 1)[0] for i in idx if len(set(i)) > 1]
    assert law.alpha_ci == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])), rel=1e-9)
    assert fit_law(ons, n_boot=500, seed=7).alpha_ci == law.alpha_ci  # seeded: reproducible
    assert fit_law(ons, n_boot=500, seed=8).alpha_ci != law.alpha_ci


def _surface_rows(emm_at, sizes, budgets, slope=4.0):
    """Noise-free rows of a surface whose crossing at budget k is emm_at(k)."""
    return [_row(s, k, 1 / (1 + (1 - T) / T * (s / emm_at(k)) ** slope)) for s in sizes for k in budgets]


def test_holdout_passes_when_the_law_holds_and_says_so_when_it_breaks():
    sizes = [int(round(x)) for x in np.geomspace(20, 1000, 25)]
    linear = _surface_rows(lambda k: 0.5 * k, sizes, BUDGETS)
    front = frontier(linear, T)
    rep = law_report(linear, front, T, bracket_factor=1.25)
    assert rep["fit"]["alpha"] == pytest.approx(1.0, abs=0.05) and rep["linear"] is True
    # the frontier's own slope, over the budgets bracketed within a factor 1.25 (the sizes are 1.18 apart here)
    assert rep["frontier_slope"]["budgets"] == 12 and rep["frontier_slope"]["alpha"] == pytest.approx(1.0, abs=0.05)
    assert law_report(linear, front, T, bracket_factor=1.1)["frontier_slope"] is None
    h = rep["holdout"]
    assert h["fit_upto_kimg"] == 384.0 and h["final_kimg"] == 768.0 and abs(h["error"]) < 0.05
    assert h["within_tolerance"] and "the law holds here" in " ".join(law_lines(rep, T))
    assert rep["predictions"][0]["kimg"] == 1536.0 and rep["predictions"][0]["emm"] == pytest.approx(768, rel=0.1)
    # memorization stops growing after half the final budget: the law fitted early overshoots
    plateau = _surface_rows(lambda k: 0.5 * min(k, 384.0), sizes, BUDGETS)
    rep = law_report(plateau, frontier(plateau, T), T, bracket_factor=1.25)
    h = rep["holdout"]
    assert h["error"] > 0.5 and not h["within_tolerance"]
    text = " ".join(law_lines(rep, T))
    assert "the law does not hold here" in text and f"off by {abs(h['error']):.0%}" in text


def test_frontier_config_is_validated_before_any_work(tmp_path):
    bad = [({"sizes": (64, 128)}, "sizes"), ({"refine_repeats": 1}, "refine_repeats"),
           ({"train": dataclasses.replace(CFG.train, kimg=None, epochs=10.0)}, "train.epochs"),
           ({"train": dataclasses.replace(CFG.train, snapshot_kimg=None)}, "train.snapshot_kimg"),
           ({"train": dataclasses.replace(CFG.train, kimg=700.0)}, "train.kimg"),
           ({"train": dataclasses.replace(CFG.train, kimg=64.0)}, "train.kimg"),
           ({"train": dataclasses.replace(CFG.train, snapshot_kimg=0.1, kimg=0.5)}, "train.snapshot_kimg")]
    for change, field in bad:
        with pytest.raises(UsageError, match=f"^{field}: .* with frontier: true"):
            run_emm(dataclasses.replace(CFG, **change), tmp_path / "x", synthetic=SyntheticCurve())
    assert not (tmp_path / "x").exists()
    from diffmem.cli import main  # a study's dry run checks its frontier values too

    study = tmp_path / "study.json"
    study.write_text(json.dumps({"name": "s", "factors": {"model.channels": [8]},
                                 "base": {"preset": "digits", "frontier": True, "train": {"kimg": 100}}}))
    assert main(["study", "--config", str(study), "--out", str(tmp_path / "st"), "--dry-run"]) == 2


def test_cli_frontier_flag_dry_run_and_synthetic_json(tmp_path, capsys):
    from diffmem.cli import main

    assert main(["emm", "--preset", "cifar10", "--frontier", "--out", str(tmp_path / "d"), "--dry-run"]) == 2
    assert "train.epochs: 40000 is not valid; expected null with frontier: true" in capsys.readouterr().err
    assert main(["emm", "--preset", "digits", "--frontier", "--out", str(tmp_path / "d"), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budgets_kimg"] == [64.0, 128.0, 192.0]
    assert main(["emm", "--preset", "digits-frontier", "--out", str(tmp_path / "d"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budgets_kimg"] == BUDGETS and plan["config"]["frontier"] is True
    assert plan["baseline_max_trainings"] == 12 * 7 and plan["baseline_max_kimg"] == 7 * sum(BUDGETS)
    assert not (tmp_path / "d").exists()
    assert emm_preset("digits-frontier").train == dataclasses.replace(emm_preset("digits").train, kimg=768.0)
    assert main(["emm", "--preset", "digits-frontier", "--out", str(tmp_path / "s"), "--synthetic", "450",
                 "--json", "--no-report"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [b["kimg"] for b in s["frontier"]] == BUDGETS
    for b in s["frontier"]:  # binomial noise: within 5 % of the true EMM 450·T/768 (α = 1)
        lo, hi = b["bracket"]
        truth = 450.0 * b["kimg"] / 768.0
        assert lo <= truth * 1.05 and hi >= truth / 1.05 and hi / lo <= 1.25
    assert s["law"]["fit"]["alpha"] == pytest.approx(1.0, abs=0.1) and s["training_kimg"] > 0
    assert main(["emm", "--preset", "digits-frontier", "--out", str(tmp_path / "s"), "--synthetic", "450"]) == 0
    text = capsys.readouterr().out
    assert "frontier: the EMM at each training budget" in text and "hold-out: fitted on the snapshots up to 384" in text
    assert "0 run now" in text and "one EMM search per budget would need up to 84 trainings" in text


def test_report_of_a_frontier_search(tmp_path):
    from PIL import Image

    from diffmem.report import render_report

    out = tmp_path / "f"
    run_emm(CFG, out, synthetic=SyntheticCurve(emm=450.0, threshold=T, snapshots_kimg=tuple(BUDGETS), growth=1.0))
    render_report(out)
    md = (out / "report.md").read_text()
    d = json.loads((out / "emm.json").read_text())
    assert "## Frontier: the EMM at every training budget" in md
    for b in d["frontier"]:  # every budget's EMM and bracket is in the table
        assert f"| {fmt.kimg(b['kimg'])} | {b['emm']:,.0f} | [{b['ci'][0]:,.0f}, {b['ci'][1]:,.0f}] | " \
               f"[{b['bracket'][0]:,.0f}, {b['bracket'][1]:,.0f}] |" in md
    assert f"|D|^{d['law']['fit']['alpha']:.3f}" in md and "hold-out: fitted on the snapshots up to 384" in md
    assert "lower bound (run stopped once memorized)" in md
    for name in ("frontier.png", "onsets.png"):
        assert f"figures/{name}" in md
        with Image.open(out / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 500


def test_budgets_print_whole_at_paper_scale():
    # a budget of tens of thousands of kimg (the reference's 2,500-kimg snapshots) never reads as 1.286e+04
    assert [fmt.kimg(x) for x in (0.032, 64.0, 2500.0, 12864.0, 80000.0, 1536.5)] == \
        ["0.032", "64", "2,500", "12,864", "80,000", "1,536.5"]
    lines = law_lines({"onsets": [], "fit": None, "predictions": [{"kimg": 20000.0, "emm": 123.0, "ci": None}],
                       "holdout": None}, T)
    assert any("20,000 kimg" in line for line in lines) and not any("e+0" in line for line in lines)


def test_prediction_interval_counts_flat_bootstrap_fits_as_unbounded():
    from diffmem.sweep.law import PowerLaw, _prediction

    rng = np.random.default_rng(0)
    alpha = rng.normal(1.0, 0.3, 2000)
    log_a = rng.normal(0.0, 0.2, 2000)

    def brute(alpha, log_a, kimg, conf=0.95):  # float64, written out: α ≤ 0 never reaches an onset → +∞
        vals = np.array([math.exp(min((math.log(kimg) - c) / a, 700.0)) if a > 0 else math.exp(700.0)
                         for a, c in zip(alpha, log_a)])
        lo, hi = np.quantile(vals, [(1 - conf) / 2, (1 + conf) / 2])
        return None if hi >= math.exp(700.0) else (lo, hi)

    few = alpha.copy()
    few[:20] = -0.5  # 1 % flat fits: the interval exists, and counts them at its upper end
    law = PowerLaw(a=1.0, alpha=1.0, sizes=(1, 2, 3, 4, 5), confidence=0.95, boot_log_a=log_a, boot_alpha=few)
    ci, ref = law.emm_ci(1000.0), brute(few, log_a, 1000.0)
    assert ci == pytest.approx(ref)
    without = PowerLaw(a=1.0, alpha=1.0, sizes=(1, 2, 3, 4, 5), confidence=0.95, boot_log_a=log_a[20:],
                       boot_alpha=few[20:]).emm_ci(1000.0)
    assert ci[1] > without[1]  # dropping them instead would narrow the interval
    many = alpha.copy()
    many[:100] = -0.5  # 5 % flat fits, more than the 2.5 % tail: no upper end, and the reason says so
    law = dataclasses.replace(law, boot_alpha=many)
    assert law.emm_ci(1000.0) is None and brute(many, log_a, 1000.0) is None
    p = _prediction(law, 1000.0)
    assert p["ci"] is None and "flat" in p["no_ci"]
    line = law_lines({"onsets": [], "fit": None, "predictions": [p], "holdout": None}, T)
    assert any("no interval (no upper end" in x for x in line)
    none = _prediction(dataclasses.replace(law, boot_alpha=np.empty(0), boot_log_a=np.empty(0)), 1000.0)
    assert "too few sizes" in none["no_ci"]
