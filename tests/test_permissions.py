"""Artefacts honour the umask: 0644 files / 0755 directories under 022, 0640 / 0750 under 027, still atomic."""

import os
import stat

import numpy as np
import pytest

from diffmem import artefacts


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root):
    """(relative path, permission bits) of everything below ``root``, ``root`` included."""
    out = [(".", stat.S_IMODE(os.stat(root).st_mode))]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out.append((os.path.relpath(p, root), stat.S_IMODE(os.lstat(p).st_mode)))
    return out


def _check_tree(root, umask):
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    for rel, mode in _modes(root):
        want = want_dir if os.path.isdir(os.path.join(root, rel)) else want_file
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)} under umask {oct(umask)}"


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    artefacts.atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    artefacts.atomic_save_npz(tmp_path / "a" / "y.npz", images=np.zeros((1, 1, 2, 2), np.uint8))
    with artefacts.atomic_dir(tmp_path / "b") as d:
        (d / "z.txt").write_text("z")
        artefacts.atomic_write_text(d / "w.txt", "w")
    _check_tree(tmp_path / "a", umask)
    _check_tree(tmp_path / "b", umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "x.json").st_mode) == (0o644 if umask == 0o022 else 0o640)
    # still atomic: no temporary is left beside the files
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.npz"]
