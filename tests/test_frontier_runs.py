"""Extending a finished run to a longer budget (bit-identical to training straight), jobs that start from a
shorter job of their lineage, and a tiny frontier search end to end with real training."""

import dataclasses
import io
import json
import shutil
from contextlib import redirect_stdout

import pytest
import torch
from safetensors.torch import load_file

from diffmem.config import DataConfig, EMMConfig, MeasureConfig, ModelConfig, SampleConfig, TrainConfig, to_dict
from diffmem.data import build_dataset
from diffmem.errors import UsageError
from diffmem.sweep.emm import job_spec
from diffmem.sweep.jobs import run_job
from diffmem.sweep.table import read_table
from diffmem.train import list_snapshots, train
from diffmem.train.extend import extend_run

MODEL = ModelConfig(channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(), dropout=0.2, precond="edm")
# dropout, gradient accumulation, batches spanning epochs (24 > 16 images), lr warm-up, EMA by half-life with ramp-up
TRAIN = TrainConfig(kimg=0.192, batch=24, batch_per_device=8, lr=2e-3, warmup_kimg=0.05, warmup_epochs=None,
                    ema_mode="halflife", ema_decay=None, ema_halflife_kimg=0.05, ema_halflife_epochs=None,
                    ema_rampup_ratio=0.5, snapshot_kimg=0.048, log_kimg=0.024, device="cpu")


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return build_dataset(DataConfig(source="digits", size=16), tmp_path_factory.mktemp("data") / "d16")


def _same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), (a, k)


@pytest.mark.slow
@pytest.mark.parametrize("short_kimg", [0.096, 0.072])  # on the snapshot grid, and off it (a last snapshot at 0.072)
def test_extended_run_is_bit_identical_to_the_straight_run(data16, tmp_path, short_kimg):
    straight = train(data16, tmp_path / "straight", MODEL, TRAIN)
    short = train(data16, tmp_path / "short", MODEL, dataclasses.replace(TRAIN, kimg=short_kimg))
    before = (short / "final.safetensors").stat().st_mtime_ns
    long = extend_run(short, tmp_path / "long", data16, MODEL, TRAIN)
    assert json.loads((long / "manifest.json").read_text())["status"] == "running"
    train(data16, long, MODEL, TRAIN)
    assert [k for k, _ in list_snapshots(long)] == [k for k, _ in list_snapshots(straight)] == \
        [0.048, 0.096, 0.144, 0.192]
    for (_, a), (_, b) in zip(list_snapshots(long), list_snapshots(straight)):
        _same_files(a, b)
    _same_files(long / "final.safetensors", straight / "final.safetensors")
    _same_files(long / "state.safetensors", straight / "state.safetensors")
    m_long, m_short = (json.loads((d / "manifest.json").read_text()) for d in (long, short))
    assert m_long["status"] == "complete" and m_long["run_identity"] != m_short["run_identity"]
    assert m_long["kimg"] == 0.192 and m_short["kimg"] == short_kimg
    assert (short / "final.safetensors").stat().st_mtime_ns == before  # the shorter run is left as it was
    train(data16, long, MODEL, TRAIN)  # finished: nothing to do
    assert extend_run(short, long, data16, MODEL, TRAIN) == long  # already extended: left alone


@pytest.mark.slow
def test_extension_refuses_what_is_not_a_prefix(data16, tmp_path):
    short = train(data16, tmp_path / "short", MODEL, dataclasses.replace(TRAIN, kimg=0.096))
    with pytest.raises(UsageError, match=r"^train.kimg: 0.048 is not valid; expected a longer duration than the "
                                         r"0.096 kimg of '.*short'$"):
        extend_run(short, tmp_path / "a", data16, MODEL, dataclasses.replace(TRAIN, kimg=0.048))
    with pytest.raises(UsageError, match=r"different config \(train.lr: 0.002 there vs 0.001 now\); only train.kimg"):
        extend_run(short, tmp_path / "b", data16, MODEL, dataclasses.replace(TRAIN, lr=1e-3))
    with pytest.raises(UsageError, match=r"^train.kimg: None is not valid; expected a duration in kimg to extend "
                                         r"'.*short' \(both runs' durations in kimg\)$"):
        extend_run(short, tmp_path / "c", data16, MODEL, dataclasses.replace(TRAIN, kimg=None, epochs=20.0))
    part = train(data16, tmp_path / "part", MODEL, TRAIN, stop_after_steps=2)
    with pytest.raises(UsageError, match="is not a finished run directory"):
        extend_run(part, tmp_path / "d", data16, MODEL, dataclasses.replace(TRAIN, kimg=0.384))
    assert not any((tmp_path / x).exists() for x in "abcd")


TINY = EMMConfig(
    model=ModelConfig(resolution=8, in_channels=1, channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(),
                      dropout=0.0, precond="edm"),
    train=TrainConfig(kimg=0.096, batch=16, lr=2e-3, warmup_kimg=0.016, warmup_epochs=None, ema_mode="constant",
                      ema_decay=0.9, ema_halflife_epochs=None, ema_rampup_ratio=None, snapshot_kimg=0.032,
                      device="cpu"),
    sample=SampleConfig(steps=4, device="cpu"),
    measure=MeasureConfig(device="cpu"),
    n_samples=32, size_min=8, size_max=64, grid_factor=8.0, bracket_factor=8.0, measure_ends=True, frontier=True,
)


def _rows(rows):
    return [{k: v for k, v in r.items() if k != "job"} for r in rows]


@pytest.mark.slow
def test_a_longer_job_starts_from_the_shorter_one(tmp_path, monkeypatch):
    import diffmem.sweep.jobs as jobs

    measured = []
    real = jobs._measure_into
    monkeypatch.setattr(jobs, "_measure_into", lambda final, *a: measured.append(final.name) or real(final, *a))
    short, long = job_spec(TINY, 16, 0, kimg=0.064), job_spec(TINY, 16, 0, kimg=0.128)
    assert short.key != long.key  # a run of another length is another job
    run_job(short, tmp_path / "jobs" / short.dirname)
    assert measured == ["optimal", "000000.032", "000000.064"]
    measured.clear()
    rows = run_job(long, tmp_path / "jobs" / long.dirname)
    assert measured == ["000000.096", "000000.128"]  # the shared snapshots and the optimum are not measured again
    measured.clear()
    straight = run_job(long, tmp_path / "alone" / long.dirname)  # no shorter job there: trained from the start
    assert len(measured) == 5
    assert _rows(rows) == _rows(straight)  # the same weights, so the same samples and ratios
    assert [r["snapshot_kimg"] for r in rows if r["kind"] == "train"] == [0.032, 0.064, 0.096, 0.128]
    # the shorter job's run removed (its results kept): the longer job trains from the start instead
    shutil.rmtree(tmp_path / "jobs" / short.dirname / "run")
    shutil.rmtree(tmp_path / "jobs" / long.dirname)
    measured.clear()
    assert _rows(run_job(long, tmp_path / "jobs" / long.dirname)) == _rows(straight)
    # every snapshot measured again; the optimum of the same subset is copied from the shorter job's
    assert measured == ["000000.032", "000000.064", "000000.096", "000000.128"]


@pytest.mark.slow
def test_tiny_frontier_search_end_to_end(tmp_path):
    from diffmem.cli import main

    cfg_path = tmp_path / "frontier.json"
    cfg_path.write_text(json.dumps(to_dict(TINY)))
    out = tmp_path / "f"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["emm", "--config", str(cfg_path), "--out", str(out), "--json"]) == 0
    s = json.loads(buf.getvalue())
    d = json.loads((out / "emm.json").read_text())
    assert [b["kimg"] for b in s["frontier"]] == [0.032, 0.064, 0.096]
    rows = [r for r in read_table(out) if r["kind"] == "train"]
    lengths = {}
    for r in rows:
        lengths[r["size"]] = max(lengths.get(r["size"], 0), r["snapshot_kimg"])
    for b in d["frontier"]:  # each budget's points, recomputed from the table by brute force
        for p in b["points"]:
            mine = [r for r in rows if r["size"] == p["size"] and r["snapshot_kimg"] <= b["kimg"] + 1e-9]
            best = max(r["ratio"] for r in mine)
            assert p["lower_bound"] == (lengths[p["size"]] < b["kimg"])
            assert p["ratio"] == best if not p["lower_bound"] else p["ratio"] >= best >= 0.9
        assert {p["size"] for p in b["points"]} == {s_ for s_ in lengths if lengths[s_] >= b["kimg"] or max(
            r["ratio"] for r in rows if r["size"] == s_) >= 0.9}
    assert s["training_kimg"] == pytest.approx(sum(lengths.values()))
    assert (out / "figures" / "frontier.png").is_file() and "## Frontier" in (out / "report.md").read_text()
    table = (out / "results.jsonl").read_text()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["emm", "--config", str(cfg_path), "--out", str(out), "--no-report"]) == 0
    assert f"trainings: {s['n_trainings']} jobs (0 run now" in buf.getvalue()
    assert (out / "results.jsonl").read_text() == table
