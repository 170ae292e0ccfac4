"""The command line as a whole: every command reachable and listed, every documented command line valid, and the
options shared by several commands spelled, described and behaving the same on each."""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffmem.cli
from diffmem.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "REPRODUCTION.md", *sorted((ROOT / "docs").glob("*.md"))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_module_is_a_command():
    # the modules on disk, not the COMMANDS list: a module with a command's interface (HELP, EXAMPLES,
    # add_arguments, run) that is not wired up fails here; helper modules of a command have none of it
    import importlib

    interface = ("HELP", "EXAMPLES", "add_arguments", "run")
    on_disk = set()
    for p in Path(diffmem.cli.__file__).parent.glob("*.py"):
        if p.stem != "__init__":
            mod = importlib.import_module(f"diffmem.cli.{p.stem}")
            if any(hasattr(mod, name) for name in interface):
                assert all(hasattr(mod, name) for name in interface), f"{p.name}: half a command module"
                on_disk.add(p.stem)
    assert set(_subparsers(build_parser())) == on_disk == set(COMMANDS)


def test_top_level_help_has_one_row_per_command():
    out = subprocess.run([sys.executable, "-m", "diffmem", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listing = out.stdout.split("examples:")[0]  # the parser's own listing, not the examples below it
    rows = dict(re.findall(r"^ {4}(\w+) +(\S.*)$", listing, flags=re.M))
    assert set(rows) == set(COMMANDS)
    for name in COMMANDS:  # each row starts with the command's own one-line summary
        summary = __import__(f"diffmem.cli.{name}", fromlist=["HELP"]).HELP
        assert summary.startswith(rows[name].strip()), (name, rows[name])


def _command_lines(text: str) -> list[str]:
    """``diffmem COMMAND …`` lines of a text: fenced or indented code lines (whole command lines) and inline code
    spans (``INLINE`` + the span: prose may name a command with only the options it is about)."""
    text = text.replace("\\\n", " ")  # shell line continuations
    found = []
    command = r"diffmem\s+(?:" + "|".join(COMMANDS) + r")\b"
    for line in text.splitlines():
        found += [m.group(1) for m in re.finditer(r"(?:^\s*|-m )(" + command + r"[^`#]*)", line)]
        found += [INLINE + m.group(1) for m in re.finditer(r"`(" + command + r"[^`]*)`", line)]
    # synopses with alternatives or optional parts ([--x], a|b, …) and bare command names in prose are not
    # command lines
    return sorted({f.strip() for f in found if not re.search(r"[\[|…]|\.\.\.", f) and len(f.split()) > 2})


INLINE = "inline: "


def _documented():
    cases = []
    for name in COMMANDS:
        mod = __import__(f"diffmem.cli.{name}", fromlist=["EXAMPLES"])
        cases += [(f"{name} --help", line) for line in _command_lines(mod.EXAMPLES)]
    cases += [("diffmem --help", line) for line in _command_lines(build_parser().epilog)]
    for doc in DOCS:
        cases += [(doc.name, line) for line in _command_lines(doc.read_text())]
    return cases


DOCUMENTED = _documented()


def test_the_documentation_has_command_lines_of_every_command():
    assert {line.removeprefix(INLINE).split()[1] for _, line in DOCUMENTED} == set(COMMANDS)
    assert {where for where, _ in DOCUMENTED} >= {f"{c} --help" for c in COMMANDS} | {"README.md", "EMM.md"}


@pytest.mark.parametrize("where,line", DOCUMENTED, ids=[f"{w}: {x}"[:90] for w, x in DOCUMENTED])
def test_every_documented_command_line_parses(where, line, capsys):
    """Each example in --help and the docs names a command and options the real parser accepts; an inline mention
    in prose names a command and options it has (spelled in full)."""
    inline = line.startswith(INLINE)
    argv = shlex.split(line.removeprefix(INLINE))[1:]
    if "--help" in argv:
        argv = [a for a in argv if a != "--help"]
        assert len(argv) == 1 and argv[0] in COMMANDS, line
        return
    parser = build_parser()
    for p in (parser, *_subparsers(parser).values()):  # documented lines spell options in full
        p.allow_abbrev = False
    if inline:
        options = set(_subparsers(parser)[argv[0]]._option_string_actions)
        unknown = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in options]
        assert not unknown, f"{where}: {line!r} names options that 'diffmem {argv[0]}' does not have: {unknown}"
        return
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: {line!r} is refused by the parser (exit {e.code}): {capsys.readouterr().err.strip()}")
    assert args.command == argv[0]


# ----------------------------------------------------------------------------------------------
# Options that mean the same on several commands: one spelling, one help text, one behaviour

SHARED = {  # option → the commands it is on (sample and measure keep their own options for now)
    "--debug": set(COMMANDS),
    "--json": {"data", "train", "sample", "measure", "emm", "study", "report"},
    "--no-progress": {"data", "train", "sample", "measure", "emm", "study"},
    "--threads": {"data", "train", "sample", "measure", "emm", "study"},
    "--dry-run": {"train", "emm", "study"},
}
OWN: set[str] = set()  # commands whose option of a shared name is their own (none)


def _action(parser: argparse.ArgumentParser, option: str):
    found = [a for a in parser._actions if option in a.option_strings]
    return found[0] if found else None


@pytest.mark.parametrize("option", list(SHARED))
def test_a_shared_option_is_the_same_on_every_command_that_has_it(option):
    subs = _subparsers(build_parser())
    have = {name for name, p in subs.items() if _action(p, option) is not None}
    assert have - OWN == SHARED[option] - OWN
    described = set()
    for name in SHARED[option] - OWN:
        a = _action(subs[name], option)
        assert a.option_strings == [option], name  # no aliases on one command only
        described.add((type(a).__name__, a.dest, a.default, a.const, a.type, a.metavar, a.nargs, a.help))
    assert len(described) == 1, described  # the same action, help text included


def test_shared_options_show_in_each_command_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        listing = capsys.readouterr().out.split("examples:")[0]
        for option, commands in SHARED.items():
            if name in commands - OWN:
                assert re.search(rf"^  {option}\b", listing, flags=re.M), (name, option)


@pytest.fixture
def restore_threads(monkeypatch):
    """Put the thread settings --threads changes back: torch's pool, the BLAS/OpenMP pools, the environment."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from diffmem.devices import THREAD_ENV

    for name in THREAD_ENV:  # monkeypatch restores each variable (or its absence) at the end
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.setenv(name, "0")
            monkeypatch.delenv(name)
    n_torch = torch.get_num_threads()
    pools = {(p["user_api"], p["num_threads"]) for p in threadpool_info()}
    yield
    torch.set_num_threads(n_torch)
    for api, n in pools:
        threadpool_limits(limits=n, user_api=api)


def _study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"name": "w", "mode": "ratio", "factors": {"model.channels": [8, 16]},
                                "base": {"preset": "digits", "sizes": [64]}}))
    return path


def _quick(command: str, tmp_path: Path) -> list[str]:
    """A run of ``command`` that does little work (a small dataset, or a dry run)."""
    data = tmp_path / "d.npz"
    if not data.exists():
        np.savez(data, images=np.random.default_rng(0).integers(0, 256, (8, 1, 8, 8), dtype=np.uint8))
    return {
        "data": ["data", "--source", "digits", "--size", "16", "--out", str(tmp_path / "ds")],
        "train": ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "digits", "--dry-run"],
        "sample": ["sample", "--optimal", str(data), "--n", "4", "--steps", "2", "--device", "cpu", "--out",
                   str(tmp_path / "s.npz")],
        "measure": ["measure", "--samples", str(data), "--train", str(data), "--device", "cpu"],
        "emm": ["emm", "--preset", "digits", "--out", str(tmp_path / "e"), "--dry-run"],
        "study": ["study", "--config", str(_study_file(tmp_path)), "--out", str(tmp_path / "s"), "--dry-run"],
    }[command]


@pytest.mark.parametrize("command", sorted(SHARED["--threads"]))
def test_threads_sets_torch_and_blas_threads(command, tmp_path, restore_threads, capsys):
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(2)
    threadpool_limits(limits=2)
    assert main([*_quick(command, tmp_path), "--threads", "1"]) == 0, capsys.readouterr().err
    assert torch.get_num_threads() == 1
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and set(blas) == {1}  # NumPy's BLAS as well (the duplicate search of `data` runs there)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # and libraries loaded later


@pytest.mark.parametrize("command", sorted(SHARED["--threads"]))
def test_threads_below_one_is_one_line_exit_2(command, tmp_path, restore_threads, capsys):
    assert main([*_quick(command, tmp_path), "--threads", "0"]) == 2
    r = capsys.readouterr()
    assert r.out == "" and r.err.count("\n") == 1
    assert f"diffmem {command}: error: --threads: 0 is not valid; expected a positive number of threads" in r.err


def test_threads_with_the_ray_backend_is_refused_before_any_work(tmp_path, restore_threads, capsys):
    out = tmp_path / "e"
    assert main(["emm", "--preset", "digits", "--out", str(out), "--backend", "ray", "--threads", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads: 2 sets the threads of jobs run in this process" in err
    assert not out.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # no Ray instance was started


@pytest.mark.parametrize("command", ["data", "sample", "measure", "emm", "study",
                                     pytest.param("train", marks=pytest.mark.slow)])
@pytest.mark.parametrize("hide", [False, True])
def test_no_progress_hides_the_bars_that_a_terminal_shows(command, hide, tmp_path, monkeypatch, capsys):
    """With stderr a terminal the long stages draw a bar there; --no-progress draws none. stdout never gets one."""
    import diffmem.cli.study
    from diffmem.sweep.study import run_study
    from diffmem.sweep.synthetic import SyntheticCurve

    def synthetic_study(cfg, out, **kw):  # the real command line, known curves instead of trainings
        return run_study(cfg, out, synthetic={"model.channels=8": SyntheticCurve(emm=100.0, noise=False),
                                               "model.channels=16": SyntheticCurve(emm=200.0, noise=False)}, **kw)

    monkeypatch.setattr(diffmem.cli.study, "run_study", synthetic_study)
    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (8, 1, 8, 8), dtype=np.uint8))
    argv = {
        "data": ["data", "--source", "shapes:res=8,classes=2,n=2600", "--out", str(tmp_path / "ds")],  # ≥ 2,048: a bar
        "train": ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "digits", "--channels", "8",
                  "--batch", "8", "--kimg", "0.032", "--device", "cpu"],
        "sample": ["sample", "--optimal", str(data), "--n", "8", "--steps", "2", "--device", "cpu", "--out",
                   str(tmp_path / "s.npz")],
        "measure": ["measure", "--samples", str(data), "--train", str(data), "--device", "cpu"],
        "emm": ["emm", "--preset", "digits", "--synthetic", "300", "--out", str(tmp_path / "e"), "--no-report"],
        "study": ["study", "--config", str(_study_file(tmp_path)), "--out", str(tmp_path / "s"), "--no-report"],
    }[command]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*argv, *(["--no-progress"] if hide else [])]) == 0
    r = capsys.readouterr()
    assert ("it/s" in r.err or "img/s" in r.err or "%|" in r.err) != hide, r.err[-500:]
    assert "%|" not in r.out


def test_report_json_names_the_files_written(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["emm", "--preset", "digits", "--synthetic", "300", "--out", str(out), "--no-report", "--json"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 1  # one JSON object, nothing else on stdout
    r = json.loads(text)
    assert (r["html"], r["markdown"]) == (str(out / "report.html"), str(out / "report.md"))
    md = (out / "report.md").read_text()
    assert r["figures"] and all(Path(f).is_file() and f"figures/{Path(f).name}" in md for f in r["figures"])


def test_the_parser_loads_no_heavy_library():
    """`diffmem --help` (every command's parser) imports neither torch, matplotlib, scipy nor scikit-learn: the
    modules that need them import them when a command runs."""
    code = ("import sys; from diffmem.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'scipy', 'sklearn', 'faiss', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_missing_extras_are_one_line_naming_them(monkeypatch, tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (8, 1, 8, 8), dtype=np.uint8))
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if the extra were not installed
    assert main(["measure", "--samples", str(data), "--train", str(data), "--backend", "faiss"]) == 2
    assert "--backend faiss: needs the faiss package, which is not installed; install the [faiss] extra" in \
        capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["emm", "--preset", "digits", "--synthetic", "300", "--out", str(tmp_path / "e"), "--backend",
                 "ray"]) == 2
    assert "--backend ray: needs the ray package, which is not installed; install the [ray] extra" in \
        capsys.readouterr().err


def test_choices_the_parser_lists_are_the_librarys():
    """Where the parser cannot import the library's table (it would load torch at --help), its choices are checked
    against the table here: a solver, distance, search backend or scheduler added to one is added to the other."""
    from diffmem.data.build import LABEL_MODES
    from diffmem.measure.knn import BACKENDS as SEARCH_BACKENDS
    from diffmem.measure.vectors import DISTANCES
    from diffmem.sample.diffusers import SCHEDULERS
    from diffmem.sample.solvers import SOLVERS
    from diffmem.sweep.backends import BACKENDS

    subs = _subparsers(build_parser())
    assert set(_action(subs["sample"], "--solver").choices) == set(SOLVERS)
    assert set(_action(subs["sample"], "--scheduler").choices) == {"saved", *SCHEDULERS}
    assert set(_action(subs["measure"], "--distance").choices) == set(DISTANCES)
    assert set(_action(subs["measure"], "--backend").choices) == set(SEARCH_BACKENDS)
    assert tuple(_action(subs["data"], "--labels").choices) == LABEL_MODES
    assert tuple(_action(subs["emm"], "--backend").choices) == BACKENDS


def test_the_architecture_page_names_modules_and_functions_that_exist():
    """docs/ARCHITECTURE.md stays true: every module it names exists and every module is placed (by name, or
    by its folder for nn/, train/ and cli/), and every `module.name` it cites is defined there."""
    import importlib

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    src = ROOT / "src" / "diffmem"
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))  # inline code, not the diagram
    tests = {s for s in spans if s.startswith("tests/")}
    assert tests and all((ROOT / p).is_file() for p in tests), tests
    named = {s for s in spans if s.endswith(".py")} - tests
    assert named and all((src / p).is_file() for p in named), sorted(p for p in named if not (src / p).is_file())
    folders = {s for s in spans if s.endswith("/")} & {"nn/", "train/", "cli/"}  # placed as a whole
    for p in src.rglob("*.py"):
        rel = p.relative_to(src).as_posix()
        if p.name not in ("__init__.py", "__main__.py"):
            assert rel in text or rel.split("/")[0] + "/" in folders, f"{rel} is not placed in docs/ARCHITECTURE.md"
    # `package/module.name` or `module.name` of a top-level module (`train.lr` and the like are config paths)
    cited = [s for s in spans if re.fullmatch(r"[a-z_/]+\.[A-Za-z_]+", s) and not s.endswith(".py")
             and (src / (s.split(".")[0] + ".py")).is_file()]
    assert len(cited) > 10
    for s in cited:
        module, name = s.rsplit(".", 1)
        mod = importlib.import_module("diffmem." + module.replace("/", "."))
        assert hasattr(mod, name), s
