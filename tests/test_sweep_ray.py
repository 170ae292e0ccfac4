"""The Ray backend gives the same results table as the local one (a local Ray instance on the CPU)."""

import pytest

from diffmem.config import EMMConfig, TrainConfig
from diffmem.sweep import LocalBackend, RayBackend, SyntheticCurve, run_emm

ray = pytest.importorskip("ray")


def test_ray_backend_matches_local(tmp_path):
    curve = SyntheticCurve(emm=200.0, slope=3.0, threshold=0.9, noise=True)
    cfg = EMMConfig(n_samples=500, size_min=32, size_max=1024, repeats=2, parallel=2, optimal=False,
                    train=TrainConfig(kimg=4.0))
    local = run_emm(cfg, tmp_path / "local", backend=LocalBackend(), synthetic=curve)
    backend = RayBackend(num_cpus=2)
    try:
        remote = run_emm(cfg, tmp_path / "ray", backend=backend, synthetic=curve)
    finally:
        backend.close()
    assert remote.n_trained_now == remote.n_trainings == local.n_trainings > 4
    assert (tmp_path / "ray" / "results.jsonl").read_text() == (tmp_path / "local" / "results.jsonl").read_text()
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()
    assert remote.summary()["points"] == local.summary()["points"]
    assert remote.estimate == local.estimate
    assert sorted(p.name for p in (tmp_path / "ray" / "jobs").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "jobs").iterdir())
