"""Faults: SIGKILL at seeded points (also inside a checkpoint write), a locked, unwritable or full output
directory, a non-finite loss. After each, the work on disk is whole and a rerun finishes as if nothing
happened."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffmem.cli import main
from diffmem.io import ImageSet, save_image_set

TRAIN_ARGS = ["--preset", "digits", "--channels", "8", "--batch", "8", "--kimg", "0.16", "--state-kimg", "0.016",
              "--snapshot-kimg", "0.04", "--dropout", "0.1", "--device", "cpu", "--no-progress", "--threads", "1"]

# A wrapper that runs `diffmem` in a child process and SIGKILLs it at a chosen point:
#   step:N   while computing the loss of the N-th training step of this process
#   write:N  inside the N-th atomic file write, after half of the bytes reached the temporary file
#   job:N    inside the N-th sweep job, after its manifest says "running"
KILLER = textwrap.dedent("""
    import os, signal, sys
    kind, n = os.environ["FAULT"].split(":")
    n, calls = int(n), [0]

    def hit():
        calls[0] += 1
        return calls[0] == n

    if kind == "step":
        import diffmem.train.step as hot_path
        real_loss = hot_path.per_sample_loss

        def per_sample_loss(*a, **k):
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_loss(*a, **k)
        hot_path.per_sample_loss = per_sample_loss
    elif kind == "write":
        real_fsync = os.fsync

        def fsync(fd):
            if hit():
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)
        os.fsync = fsync
    elif kind == "job":
        import diffmem.sweep.jobs as jobs
        real_rows = jobs.synthetic_rows

        def synthetic_rows(spec):
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rows(spec)
        jobs.synthetic_rows = synthetic_rows
    elif kind == "trainjob":
        import diffmem.sweep.jobs as jobs
        real_job = jobs._train_job

        def _train_job(spec, directory):
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_job(spec, directory)
        jobs._train_job = _train_job
    from diffmem.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _child(tmp_path, argv, fault=None, timeout=300):
    script = tmp_path / "killer.py"
    if not script.exists():
        script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if fault:
        env["FAULT"] = f"{fault[0]}:{fault[1]}"
    cmd = [sys.executable, str(script)] if fault else [sys.executable, "-m", "diffmem"]
    return subprocess.run(cmd + argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    rng = np.random.default_rng(3)
    p = tmp_path_factory.mktemp("data") / "d16.npz"
    save_image_set(p, ImageSet(images=rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)))
    return p


def _assert_whole(run):
    """Every file a reader would pick up (no leading dot) is complete and readable."""
    from diffmem.train.checkpoints import SNAPSHOT_FORMAT, STATE_FORMAT, read_tensors

    for p in run.rglob("*"):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix == ".safetensors":
            read_tensors(p, STATE_FORMAT if p.name == "state.safetensors" else SNAPSHOT_FORMAT, "file")
        elif p.suffix == ".json":
            json.loads(p.read_text())


def _stats(run):
    return [(s["step"], s["loss"]) for s in map(json.loads, (run / "stats.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_train_killed_at_seeded_points_resumes_bit_identical(data16, tmp_path):
    """SIGKILL `diffmem train` five times (during steps and inside checkpoint writes), then finish: the
    final weights, EMA, optimizer state and logged losses equal those of one uninterrupted run."""
    rng = np.random.default_rng(8)
    faults = [("write", int(rng.integers(3, 6))) if i % 2 else ("step", int(rng.integers(3, 7))) for i in range(5)]
    run = tmp_path / "killed"
    argv = ["train", "--data", str(data16), "--out", str(run), *TRAIN_ARGS]
    for fault in faults:
        r = _child(tmp_path, argv, fault)
        assert r.returncode == -signal.SIGKILL, (fault, r.stderr[-2000:])
        assert not (run / "final.safetensors").exists()
        _assert_whole(run)
        temps = [p for p in run.rglob(".*") if p.name.endswith(".tmp")]
        assert len(temps) == (fault[0] == "write"), temps  # a write kill leaves its half file; a restart clears it
    r = _child(tmp_path, argv)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_whole(run)
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # the killed writes' temporaries are gone

    from diffmem.train.checkpoints import list_snapshots

    assert main(["train", "--data", str(data16), "--out", str(tmp_path / "whole"), *TRAIN_ARGS]) == 0
    whole = tmp_path / "whole"
    for name in ("final.safetensors", "state.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(run / name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert [k for k, _ in list_snapshots(run)] == [k for k, _ in list_snapshots(whole)] == [0.04, 0.08, 0.12, 0.16]
    assert _stats(run) == _stats(whole)  # one line per logged step, none doubled by the resumes


def _table(out):
    return {name: (out / name).read_text().replace(str(out), "OUT") for name in ("results.jsonl", "results.csv")}


def test_emm_killed_mid_plan_reuses_finished_jobs(tmp_path):
    """SIGKILL `diffmem emm` inside a job and inside a file write, then rerun: finished jobs are read back
    untouched, the interrupted one is redone, the table equals an uninterrupted plan's."""
    args = ["--preset", "digits", "--synthetic", "300", "--no-report", "--json", "--n-samples", "500"]
    whole = tmp_path / "whole"
    assert main(["emm", "--out", str(whole), *args]) == 0
    rows = [json.loads(x) for x in (whole / "results.jsonl").read_text().splitlines()]
    n_jobs = len({r["job"] for r in rows})
    assert n_jobs >= 3 and len(rows) == len({(r["job"], r["snapshot_kimg"]) for r in rows})

    out = tmp_path / "killed"
    rng = np.random.default_rng(9)
    k = int(rng.integers(2, n_jobs))
    r = _child(tmp_path, ["emm", "--out", str(out), *args], ("job", k))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in (out / "jobs").glob("*/manifest.json")}
    done = {name for name, m in manifests.items() if m["status"] == "complete"}
    assert len(done) == k - 1 and len(manifests) == k  # the k-th job was cut off while running
    mtimes = {name: (out / "jobs" / name / "manifest.json").stat().st_mtime_ns for name in done}
    assert not (out / "emm.json").exists()

    r = _child(tmp_path, ["emm", "--out", str(out), *args], ("write", int(rng.integers(2, 6))))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = _child(tmp_path, ["emm", "--out", str(out), *args])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["n_trainings"] == n_jobs
    assert {name: (out / "jobs" / name / "manifest.json").stat().st_mtime_ns for name in done} == mtimes
    assert _table(out) == _table(whole)
    ref = json.loads((whole / "emm.json").read_text())
    keys = ("points", "bracket", "emm", "ci")
    assert [summary[k] for k in keys] == [ref[k] for k in keys]


@pytest.mark.slow
def test_study_killed_mid_plan_reuses_finished_trainings(tmp_path):
    """SIGKILL `diffmem study` (real tiny trainings) as its second training job starts, then rerun: the
    first value's job is read back untouched and the results table equals an uninterrupted study's."""
    import dataclasses

    from diffmem.config import to_dict
    from test_emm_e2e import TINY

    base = to_dict(dataclasses.replace(TINY, sizes=(8,), optimal=False))
    cfg = tmp_path / "study.json"
    cfg.write_text(json.dumps({"name": "w", "mode": "ratio", "factors": {"model.channels": [4, 8]}, "base": base}))
    args = ["--config", str(cfg), "--no-report", "--json"]
    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert _child(tmp_path, ["study", "--out", str(whole), *args]).returncode == 0

    r = _child(tmp_path, ["study", "--out", str(out), *args], ("trainjob", 2))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in (out / "jobs").glob("*/manifest.json")}
    done = [name for name, m in manifests.items() if m["status"] == "complete"]
    assert len(done) == 1 and not (out / "study.json").exists()
    mtime = (out / "jobs" / done[0] / "manifest.json").stat().st_mtime_ns

    r = _child(tmp_path, ["study", "--out", str(out), *args])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n_trainings"] == 2
    assert (out / "jobs" / done[0] / "manifest.json").stat().st_mtime_ns == mtime
    assert _table(out) == _table(whole)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    from diffmem.artefacts import atomic_dir, remove_stale_temps

    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    keep = [d / "manifest.json", d / ".lock", d / "checkpoints" / "snapshot-000000.040.safetensors", d / ".hidden"]
    for p in keep:
        p.write_text("x")
    stale = [d / ".state.safetensors.ab12cd.tmp", d / "checkpoints" / ".snapshot-000000.080.safetensors.x1.tmp"]
    for p in stale:
        p.write_text("half")
    with pytest.raises(KeyboardInterrupt), atomic_dir(d / "dataset") as tmp:  # an interrupted directory build
        (tmp / "dataset.npz").write_text("half")
        os.rename(tmp, d / ".dataset.kept.tmp")  # as a SIGKILL would leave it (no cleanup ran)
        tmp.mkdir()
        raise KeyboardInterrupt
    assert remove_stale_temps(d) == 3
    assert sorted(p for p in d.rglob("*") if p.is_file()) == sorted(keep)


LOCKER = ("import sys; from diffmem.artefacts import dir_lock\n"
          "with dir_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()\n")


@pytest.mark.parametrize("command", ["train", "emm", "study"])
def test_second_process_on_the_same_out_is_refused(command, data16, tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(out)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        if command == "study":
            cfg = tmp_path / "study.json"
            cfg.write_text(json.dumps({"name": "w", "mode": "ratio", "factors": {},
                                       "base": {"preset": "digits", "sizes": [64]}}))
            argv = ["study", "--config", str(cfg), "--out", str(out), "--no-report"]
        elif command == "emm":
            argv = ["emm", "--preset", "digits", "--synthetic", "300", "--out", str(out), "--no-report"]
        else:
            argv = ["train", "--data", str(data16), "--out", str(out), *TRAIN_ARGS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by another diffmem process (pid {holder.pid})" in err
        assert "--out" in err
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written next to the holder's work
    finally:
        holder.communicate("", timeout=30)


@pytest.mark.parametrize("command", ["data", "train", "sample", "measure", "emm"])
def test_unwritable_out_is_a_clear_error_with_nothing_written(command, data16, tmp_path, capsys):
    """--out below a regular file (what a read-only directory is to root, who may write anywhere)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"
    argv = {
        "data": ["data", "--source", "digits", "--size", "8", "--out", str(out)],
        "train": ["train", "--data", str(data16), "--out", str(out), *TRAIN_ARGS],
        "sample": ["sample", "--optimal", str(data16), "--n", "2", "--steps", "2", "--out", str(out / "s.npz")],
        "measure": ["measure", "--samples", str(data16), "--train", str(data16), "--out", str(out)],
        "emm": ["emm", "--preset", "digits", "--synthetic", "300", "--out", str(out), "--no-report"],
    }[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err  # a failure while running
    assert str(blocker) in err, err  # the message names the path it could not create
    if command != "train":  # the library's own message, not an exception's class and text
        assert err.startswith(f"diffmem {command}: error: --out: cannot create"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and blocker.read_text() == "x"


def test_read_only_out_directory(data16, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes (covered by the --out-below-a-file "
                        "test above)")
        code = main(["data", "--source", "digits", "--size", "8", "--out", str(ro / "d")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "Permission denied" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_disk_full_during_a_checkpoint_keeps_the_last_whole_state(data16, tmp_path, capsys, monkeypatch):
    """ENOSPC inside the third file write of a run: exit 1 with one line, no temporary file left."""
    import errno

    real, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data16), "--out", str(run), *TRAIN_ARGS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    _assert_whole(run)
    monkeypatch.setattr(os, "fsync", real)
    assert main(["train", "--data", str(data16), "--out", str(run), *TRAIN_ARGS]) == 0  # and it resumes
    assert (run / "final.safetensors").is_file()


def test_non_finite_loss_stops_with_the_step_and_the_last_good_state(data16, tmp_path, capsys, monkeypatch):
    import diffmem.train.step as hot_path

    real, calls = hot_path.per_sample_loss, []

    def poisoned(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float("inf") if len(calls) == 6 else out

    monkeypatch.setattr(hot_path, "per_sample_loss", poisoned)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data16), "--out", str(run), *TRAIN_ARGS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loss is inf at step 5" in err and "last good state" in err, err
    from safetensors import safe_open

    with safe_open(str(run / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["step"]) == 5  # steps 0–4 done: the state before the bad step
    assert not (run / "final.safetensors").exists()
    _assert_whole(run)
    # that state is good: resumed without the fault, the run ends with the bits of a run never poisoned
    monkeypatch.setattr(hot_path, "per_sample_loss", real)
    assert main(["train", "--data", str(data16), "--out", str(run), *TRAIN_ARGS]) == 0
    assert main(["train", "--data", str(data16), "--out", str(tmp_path / "clean"), *TRAIN_ARGS]) == 0
    a, b = load_file(str(run / "final.safetensors")), load_file(str(tmp_path / "clean" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_emm_on_ray_interrupted_then_resumed(tmp_path):
    """The Ray backend interrupted after its first finished job, then rerun: finished jobs are reused and
    the table equals an uninterrupted local plan's."""
    pytest.importorskip("ray")
    from diffmem.config import EMMConfig, TrainConfig
    from diffmem.sweep import LocalBackend, RayBackend, SyntheticCurve, run_emm

    curve = SyntheticCurve(emm=200.0, slope=3.0, threshold=0.9, noise=True)
    cfg = EMMConfig(n_samples=500, size_min=32, size_max=1024, parallel=2, optimal=False, train=TrainConfig(kimg=4.0))
    whole = run_emm(cfg, tmp_path / "whole", backend=LocalBackend(), synthetic=curve)
    done = []

    def interrupt(spec, reused):
        done.append(spec.dirname)
        if len(done) == 2:
            raise KeyboardInterrupt

    backend = RayBackend(num_cpus=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_emm(cfg, tmp_path / "ray", backend=backend, synthetic=curve, on_job=interrupt)
        jobs = tmp_path / "ray" / "jobs"
        mtimes = {name: (jobs / name / "manifest.json").stat().st_mtime_ns for name in done}
        res = run_emm(cfg, tmp_path / "ray", backend=backend, synthetic=curve)
    finally:
        backend.close()
    assert {name: (jobs / name / "manifest.json").stat().st_mtime_ns for name in done} == mtimes
    assert res.n_trainings == whole.n_trainings and res.n_trained_now <= whole.n_trainings - 2
    assert _table(tmp_path / "ray") == _table(tmp_path / "whole")
    assert res.estimate == whole.estimate
