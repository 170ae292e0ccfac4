"""run_emm on synthetic jobs: results table, resume after a kill, content addressing, refinement."""

import csv
import json

import pytest

from diffmem.config import EMMConfig, TrainConfig
from diffmem.errors import UsageError
from diffmem.sweep import SyntheticCurve, run_emm
from diffmem.sweep.table import read_table

CURVE = SyntheticCurve(emm=300.0, slope=4.0, threshold=0.9, snapshots_kimg=(1.0, 2.0, 4.0), noise=False)
TRAIN = TrainConfig(kimg=4.0)  # a valid recipe; the synthetic curve stands in for its training
CFG = EMMConfig(n_samples=1000, size_min=64, size_max=1024, optimal=False, train=TRAIN)


def test_emm_on_a_known_curve(tmp_path):
    res = run_emm(CFG, tmp_path / "e", synthetic=CURVE)
    lo, hi = res.estimate.bracket
    assert lo <= 300 < hi and hi / lo <= 1.25
    # the interpolation between the bracket sizes recovers the true crossing closely
    assert res.estimate.emm == pytest.approx(300, rel=0.03)
    assert res.estimate.ci[0] < 300 < res.estimate.ci[1]
    s = res.summary()
    assert sorted(s) == ["bracket", "ci", "emm", "n_trainings", "optimal", "points", "wall_s"]
    assert all(sorted(p) == ["best_snapshot_kimg", "ci", "n_samples", "ratio", "size"] for p in s["points"])
    assert s["n_trainings"] == len(s["points"]) <= 5
    # best snapshot is the last one on this curve, and its ratio is the point's ratio
    assert all(p["best_snapshot_kimg"] == 4.0 for p in s["points"])
    for p in s["points"]:
        assert p["ratio"] == round(1000 * CURVE.expected(p["size"], 4.0)) / 1000
    rows = read_table(tmp_path / "e")
    assert len(rows) == 3 * s["n_trainings"]  # one row per run × snapshot
    with open(tmp_path / "e" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    on_disk = json.loads((tmp_path / "e" / "emm.json").read_text())
    assert on_disk["bracket"] == [lo, hi] and on_disk["threshold"] == pytest.approx(0.9)


def test_resume_after_a_kill_redoes_nothing_finished(tmp_path):
    full = run_emm(CFG, tmp_path / "full", synthetic=CURVE)
    ran = []

    def kill_after_two(spec, reused):
        ran.append((spec.size, reused))
        if len(ran) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_emm(CFG, tmp_path / "e", synthetic=CURVE, on_job=kill_after_two)
    assert not (tmp_path / "e" / "emm.json").exists()
    first = [s for s, _ in ran]
    # a job that was interrupted half-way (manifest says running) is redone, not trusted
    half = next((tmp_path / "e" / "jobs").glob(f"synthetic-s{first[0]}-*"))
    m = json.loads((half / "manifest.json").read_text())
    m["status"] = "running"
    (half / "manifest.json").write_text(json.dumps(m))
    ran.clear()
    res = run_emm(CFG, tmp_path / "e", synthetic=CURVE, on_job=lambda spec, reused: ran.append((spec.size, reused)))
    assert [s for s, r in ran if r] == first[1:]  # the finished job is read back
    assert [s for s, r in ran if not r][0] == first[0]  # the half-done one is redone
    assert res.n_trained_now == full.n_trainings - 1
    assert (tmp_path / "e" / "results.jsonl").read_text().replace("/e/", "/") == \
        (tmp_path / "full" / "results.jsonl").read_text().replace("/full/", "/")
    again = run_emm(CFG, tmp_path / "e", synthetic=CURVE)
    assert again.n_trained_now == 0 and again.summary()["points"] == full.summary()["points"]
    assert (tmp_path / "e" / "results.jsonl").read_text() == (tmp_path / "full" / "results.jsonl").read_text()


def test_a_directory_of_another_config_is_refused(tmp_path):
    run_emm(CFG, tmp_path / "e", synthetic=CURVE)
    other = EMMConfig(n_samples=500, size_min=64, size_max=1024, optimal=False, train=TRAIN)
    with pytest.raises(UsageError, match=r"--out: '.*e' holds an EMM search of a different config \(stage 'emm'\)"):
        run_emm(other, tmp_path / "e", synthetic=CURVE)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "stray.txt").write_text("x")
    with pytest.raises(UsageError, match=r"expected a new directory, or an EMM search directory to resume \(it holds 1 "
                                         r"entry: stray.txt\)"):
        run_emm(CFG, tmp_path / "x", synthetic=CURVE)


def test_jobs_are_shared_by_content_across_searches(tmp_path):
    a = run_emm(CFG, tmp_path / "a", jobs_root=tmp_path / "jobs", synthetic=CURVE)
    narrower = EMMConfig(n_samples=1000, size_min=64, size_max=1024, bracket_factor=1.1, optimal=False, train=TRAIN)
    b = run_emm(narrower, tmp_path / "b", jobs_root=tmp_path / "jobs", synthetic=CURVE)
    assert b.n_trainings > a.n_trainings
    assert b.n_trained_now == b.n_trainings - a.n_trainings  # every size of the first search is reused
    assert b.estimate.bracket[1] / b.estimate.bracket[0] <= 1.1


def test_fixed_sizes_and_refinement_of_straddling_sizes(tmp_path):
    fixed = EMMConfig(n_samples=1000, sizes=(100, 300, 900), optimal=False, train=TRAIN)
    res = run_emm(fixed, tmp_path / "f", synthetic=CURVE)
    assert [p.size for p in res.points] == [100, 300, 900] and res.n_trainings == 3
    assert res.flagged == [300]  # expected ratio exactly 0.9 there: its interval straddles 1 − ε
    noisy = SyntheticCurve(emm=300.0, slope=4.0, threshold=0.9, noise=True)
    refine = EMMConfig(n_samples=200, size_min=64, size_max=1024, refine_repeats=2, optimal=False, train=TRAIN)
    res = run_emm(refine, tmp_path / "r", synthetic=noisy)
    lo, hi = res.estimate.bracket
    reps = {p.size: len(p.repeats) for p in res.points}
    for p in res.points:
        if p.size in (lo, hi):  # bracket sizes that straddled were given up to 2 more repeats
            assert len(p.repeats) == 3 or not p.straddles(0.9)
        else:  # the other sizes were measured once
            assert reps[p.size] == 1, (p.size, reps)
    assert res.n_trainings == sum(reps.values())
    assert max(reps.values()) == 3  # this seed's bracket sizes straddle 0.9 with 200 samples


def test_measure_confidence_sets_every_interval_of_the_search(tmp_path):
    """measure.confidence is the level of the points' intervals, of the EMM's, of the refinement's straddle test,
    of the frontier's and of the law's (each against scipy's Wilson interval or the 95 % run)."""
    import dataclasses

    from scipy.stats import binomtest

    from diffmem.config import MeasureConfig

    fixed = EMMConfig(n_samples=1000, sizes=(100, 291, 300, 400, 900), optimal=False, train=TRAIN)
    wide, narrow = (run_emm(dataclasses.replace(fixed, measure=MeasureConfig(confidence=c)), tmp_path / str(c),
                            synthetic=CURVE) for c in (0.95, 0.5))
    for res, conf in ((wide, 0.95), (narrow, 0.5)):
        for p in res.points:
            ref = binomtest(p.n_memorized, p.n_samples).proportion_ci(confidence_level=conf, method="wilson")
            assert p.ci == pytest.approx((ref.low, ref.high), abs=1e-12)
        assert json.loads((tmp_path / str(conf) / "emm.json").read_text())["confidence"] == conf
        for budget in res.frontier:
            for p in budget.points:  # the frontier's points as well
                ref = binomtest(p.n_memorized, p.n_samples).proportion_ci(confidence_level=conf, method="wilson")
                assert p.ci == pytest.approx((ref.low, ref.high), abs=1e-12)
        if res.law.get("fit"):
            assert res.law["fit"]["confidence"] == conf
    lo95, hi95 = wide.estimate.ci
    lo50, hi50 = narrow.estimate.ci
    assert wide.estimate.emm == narrow.estimate.emm and lo95 < lo50 <= hi50 < hi95  # a narrower EMM interval
    # straddling depends on the level: |D| = 291 (910 of 1,000 memorized) straddles 0.9 at 95 %, not at 50 %
    assert round(1000 * CURVE.expected(291, 4.0)) == 910
    assert wide.flagged == [291, 300] and narrow.flagged == [300]


def test_what_needs_the_data_is_refused_at_the_start_of_each_job(tmp_path):
    """A model whose resolution levels do not fit the source's images (known only once the dataset is built) is
    refused at the start of the job, naming the field by its config path, before the held-out baseline or any
    training; with data.resolution given, before the search starts."""
    import dataclasses

    from diffmem.config import emm_preset

    cfg = dataclasses.replace(emm_preset("digits"), sizes=(8,), n_samples=10, heldout=10)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, channel_mult=(1, 1, 1, 1, 1)))
    with pytest.raises(UsageError, match=r"^model.channel_mult: \[1, 1, 1, 1, 1\] is not valid; expected at most as "
                                         r"many levels as the data's 8×8 images can be halved into \(5 levels need a "
                                         r"resolution divisible by 16\)$"):
        run_emm(cfg, tmp_path / "e")
    (job,) = (tmp_path / "e" / "jobs").iterdir()
    assert sorted(p.name for p in job.iterdir()) == ["dataset", "manifest.json"]  # no held-out baseline, no run
    with pytest.raises(UsageError, match=r"^model.channel_mult: .* the data's 4×4 images"):
        run_emm(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=4)), tmp_path / "f")
    assert not (tmp_path / "f").exists()
