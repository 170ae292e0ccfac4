"""Every dataset source, read from small files written here in the exact official formats."""

import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from diffmem.data import load_source
from diffmem.data.cifar10 import restricted_loads
from diffmem.data.digits import digits_uint8
from diffmem.data.shapes import render_shapes
from diffmem.data.sources import SOURCES, absolute_spec
from diffmem.errors import UsageError

# ----------------------------------------------------------------------------------------------
# Writers of the official formats (shared with the other data tests)


def _str2(b: bytes) -> bytes:
    """A Python-2 ``str`` as cPickle protocol 2 writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int2(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _ndarray2(a: np.ndarray, dtype_name: bytes = b"u1", raw: bytes | None = None) -> bytes:
    """A NumPy array as pickled by NumPy 1.x under Python 2 (protocol 2), as in CIFAR-10's batches."""
    shape = b"".join(_int2(s) for s in a.shape) + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[a.ndim]
    dtype = (b"cnumpy\ndtype\n" + _str2(dtype_name) + _int2(0) + _int2(1) + b"\x87R"
             + b"(" + _int2(3) + _str2(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _int2(0) + b"tb")
    state = b"(" + _int2(1) + shape + dtype + b"\x89" + _str2(a.tobytes() if raw is None else raw) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int2(0) + b"\x85"
            + _str2(b"b") + b"\x87R" + state + b"b")


def py2_pickle(d: dict) -> bytes:
    """A dict of Python-2 strs, int lists, str lists and uint8 arrays as a protocol-2 pickle."""

    def value(v) -> bytes:
        if isinstance(v, np.ndarray):
            return _ndarray2(v)
        if isinstance(v, bytes):
            return _str2(v)
        if isinstance(v, int):
            return _int2(v)
        if isinstance(v, list):
            return b"]" + (b"(" + b"".join(value(x) for x in v) + b"e" if v else b"")
        raise TypeError(type(v))

    body = b"".join(_str2(k.encode()) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def cifar_arrays(per_batch: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (5·per_batch)×3072 and labels of a tiny CIFAR-10 training set."""
    rng = np.random.default_rng(seed)
    n = 5 * per_batch
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), (np.arange(n) * 7 % 10).astype(np.int64)


def _tar_gz(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_cifar_python(path, per_batch: int = 6, seed: int = 0, batch1: bytes | None = None):
    """A cifar-10-python.tar.gz as the authors distribute it (cifar-10-batches-py/…)."""
    x, y = cifar_arrays(per_batch, seed)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    members = {"cifar-10-batches-py/batches.meta": py2_pickle(
        {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})}
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        members[f"cifar-10-batches-py/data_batch_{b + 1}"] = py2_pickle({
            "batch_label": f"training batch {b + 1} of 5".encode(),
            "labels": [int(v) for v in y[sl]],
            "data": x[sl],
            "filenames": [f"img_{i}.png".encode() for i in range(sl.start, sl.stop)],
        })
    if batch1 is not None:
        members["cifar-10-batches-py/data_batch_1"] = batch1
    members["cifar-10-batches-py/test_batch"] = members["cifar-10-batches-py/data_batch_5"]
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    _tar_gz(path, members)
    return x, y


def write_cifar_binary(path, per_batch: int = 6, seed: int = 0):
    """A cifar-10-binary.tar.gz: records of <1 label byte><3072 pixel bytes>."""
    x, y = cifar_arrays(per_batch, seed)
    members = {"cifar-10-batches-bin/batches.meta.txt": b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\n"
               b"horse\nship\ntruck\n\n"}
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        rec = np.concatenate([y[sl, None].astype(np.uint8), x[sl]], axis=1)
        members[f"cifar-10-batches-bin/data_batch_{b + 1}.bin"] = rec.tobytes()
    members["cifar-10-batches-bin/test_batch.bin"] = members["cifar-10-batches-bin/data_batch_1.bin"]
    _tar_gz(path, members)
    return x, y


def png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_edm_zip(path, images: np.ndarray, labels: np.ndarray | None, extra: dict[str, bytes] | None = None):
    """An image zip as EDM's dataset_tool writes it: 00000/img00000000.png + dataset.json."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w") as zf:
        for name, img in zip(names, images):
            zf.writestr(name, png_bytes(img))
        meta = {"labels": None if labels is None else [[n, int(v)] for n, v in zip(names, labels)]}
        zf.writestr("dataset.json", json.dumps(meta))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return names


def exec_payload(marker) -> bytes:
    """A pickle that, when unpickled without restriction, writes ``marker``."""
    code = f"open({str(marker)!r}, 'w').write('pwned')".encode()
    return b"cbuiltins\nexec\n(X" + struct.pack("<I", len(code)) + code + b"tR."


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_scaled_to_uint8_half_up():
    from sklearn.datasets import load_digits

    s = load_source("digits")
    d = load_digits()
    assert s.images.shape == (1797, 1, 8, 8) and s.images.dtype == np.uint8
    assert np.array_equal(s.labels, d.target) and s.num_classes == 10
    ref = np.array([int(v * 255 / 16 + 0.5) for v in d.images.ravel()], dtype=np.uint8).reshape(-1, 1, 8, 8)
    assert np.array_equal(s.images, ref)
    assert digits_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]


# ----------------------------------------------------------------------------------------------
# CIFAR-10


def test_hand_written_pickle_is_what_numpy_itself_reads():
    x, y = cifar_arrays(2)
    blob = py2_pickle({"labels": [int(v) for v in y], "data": x})
    ref = pickle.loads(blob, encoding="bytes")  # the unrestricted reader, on our own trusted blob
    assert np.array_equal(ref[b"data"], x) and ref[b"labels"] == y.tolist()
    mine = restricted_loads(blob)
    assert np.array_equal(mine["data"], x) and mine["data"].dtype == np.uint8 and mine["labels"] == y.tolist()


@pytest.mark.parametrize("writer", [write_cifar_python, write_cifar_binary])
def test_cifar10_archives(tmp_path, writer):
    path = tmp_path / "cifar.tar.gz"
    x, y = writer(path)
    s = load_source(f"cifar10:{path}")
    assert s.images.shape == (30, 3, 32, 32)
    # official layout: row = 1024 red, 1024 green, 1024 blue, each row-major 32×32
    for i, (c, r, col) in enumerate([(0, 0, 0), (1, 5, 7), (2, 31, 31)]):
        assert s.images[i, c, r, col] == x[i, c * 1024 + r * 32 + col]
    assert np.array_equal(s.images.reshape(30, -1), x)
    assert np.array_equal(s.labels, y)
    assert s.class_names[:3] == ("airplane", "automobile", "bird")


def test_cifar10_extracted_folder(tmp_path):
    path = tmp_path / "cifar.tar.gz"
    x, _ = write_cifar_python(path)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    s = load_source(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    assert np.array_equal(s.images.reshape(30, -1), x)


def test_cifar10_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.tar.gz"
    write_cifar_python(path, batch1=exec_payload(marker))
    with pytest.raises(UsageError, match="builtins.exec.*refused"):
        load_source(f"cifar10:{path}")
    assert not marker.exists()
    # the same payload does run under an unrestricted unpickler: the test above is meaningful
    proof = tmp_path / "proof"
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=exec_payload(proof), check=True)
    assert proof.exists()


@pytest.mark.parametrize("dtype_name", [b"O", b"V8"])
def test_restricted_unpickler_refuses_non_numeric_arrays(dtype_name):
    blob = b"\x80\x02" + _ndarray2(np.zeros(2, dtype=np.uint8), dtype_name=dtype_name, raw=b"\0" * 16) + b"."
    with pytest.raises(pickle.UnpicklingError, match="not a plain numeric dtype"):
        restricted_loads(blob)


def test_restricted_unpickler_refuses_short_payload():
    blob = b"\x80\x02" + _ndarray2(np.zeros((2, 3), dtype=np.uint8), raw=b"\0" * 5) + b"."
    with pytest.raises(pickle.UnpicklingError, match="5 bytes"):
        restricted_loads(blob)


# ----------------------------------------------------------------------------------------------
# zip, folder, npz


def test_edm_zip_with_labels_and_without(tmp_path, rng):
    imgs = rng.integers(0, 256, (5, 3, 6, 6), dtype=np.uint8)
    write_edm_zip(tmp_path / "a.zip", imgs, np.array([4, 2, 4, 9, 2]))
    s = load_source(f"zip:{tmp_path / 'a.zip'}")
    assert np.array_equal(s.images, imgs)
    assert s.labels.tolist() == [1, 0, 1, 2, 0] and s.class_names == ("2", "4", "9")  # relabelled in order
    write_edm_zip(tmp_path / "b.zip", imgs[:, :1], None)
    s = load_source(f"zip:{tmp_path / 'b.zip'}")
    assert s.labels is None and np.array_equal(s.images, imgs[:, :1])


@pytest.mark.parametrize("bad_name", ["../evil.png", "/abs.png", "00000/../../x.png", "C:/win.png", "a\\..\\b.png"])
def test_zip_member_names_that_escape_are_refused(tmp_path, rng, bad_name):
    imgs = rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    write_edm_zip(tmp_path / "a.zip", imgs, None, extra={bad_name: png_bytes(imgs[0])})
    with pytest.raises(UsageError, match="escapes the archive"):
        load_source(f"zip:{tmp_path / 'a.zip'}")


def test_folder_labels_from_sorted_subfolders(tmp_path, rng):
    from PIL import Image

    imgs = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    for i, cls in enumerate(["dog", "cat", "dog", "ant", "cat"]):
        (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(tmp_path / "tree" / cls / f"{i}.png")
    s = load_source(f"folder:{tmp_path / 'tree'}")
    assert s.class_names == ("ant", "cat", "dog")
    assert s.labels.tolist() == [0, 1, 1, 2, 2]  # ant/3, cat/1, cat/4, dog/0, dog/2
    assert np.array_equal(s.images, imgs[[3, 1, 4, 0, 2]].transpose(0, 3, 1, 2))
    Image.fromarray(imgs[0]).save(tmp_path / "tree" / "loose.png")
    with pytest.raises(UsageError, match="both directly in it"):
        load_source(f"folder:{tmp_path / 'tree'}")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(imgs[0]).save(flat / "a.png")
    assert load_source(f"folder:{flat}").labels is None


def test_npz_source(tmp_path, rng):
    imgs = rng.integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.array([7, 3, 7, 3]))
    s = load_source(f"npz:{tmp_path / 'a.npz'}")
    assert np.array_equal(s.images, imgs) and s.labels.tolist() == [1, 0, 1, 0] and s.class_names == ("3", "7")
    np.savez(tmp_path / "u.npz", images=imgs, labels=np.full(4, -1))
    assert load_source(f"npz:{tmp_path / 'u.npz'}").labels is None
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(UsageError, match="^data.source: .*object arrays"):
        load_source(f"npz:{tmp_path / 'obj.npz'}")


# ----------------------------------------------------------------------------------------------
# shapes


def test_shapes_diversity_zero_has_one_image_per_class():
    imgs = render_shapes(res=12, classes=7, diversity=0.0, n=70, channels=3, seed=3)
    assert imgs.shape == (70, 3, 12, 12)
    assert len(np.unique(imgs.reshape(70, -1), axis=0)) == 7
    assert np.array_equal(imgs[0], imgs[7]) and not np.array_equal(imgs[0], imgs[1])
    more = render_shapes(res=12, classes=7, diversity=0.5, n=70, channels=3, seed=3)
    assert len(np.unique(more.reshape(70, -1), axis=0)) == 70


def test_shapes_disk_area_and_intensity_known_answer():
    # class 0 at diversity 0 is a disk of radius 0.55 (image half-width 1) on background 0.1,
    # in hue 0 (RGB 0.9, 0.18, 0.18) → luminance 0.299·0.9 + 0.587·0.18 + 0.114·0.18
    img = render_shapes(res=64, classes=10, diversity=0.0, n=1, channels=1)[0, 0].astype(np.float64) / 255
    area = np.pi * 0.55**2 / 4  # fraction of the image
    lum = 0.299 * 0.9 + 0.587 * 0.18 + 0.114 * 0.18
    assert img.mean() == pytest.approx(0.1 * (1 - area) + lum * area, abs=2e-3)
    assert img[32, 32] == pytest.approx(lum, abs=1 / 255) and img[0, 0] == pytest.approx(0.1, abs=1 / 255)


def test_shapes_are_seeded_and_prefix_stable():
    a = render_shapes(16, 10, 0.7, 40, seed=5)
    assert np.array_equal(a[:25], render_shapes(16, 10, 0.7, 25, seed=5))
    assert not np.array_equal(a, render_shapes(16, 10, 0.7, 40, seed=6))
    s = load_source("shapes:res=8,classes=3,n=9,channels=1")
    assert s.images.shape == (9, 1, 8, 8) and s.labels.tolist() == [0, 1, 2] * 3 and s.num_classes == 3


@pytest.mark.parametrize("spec,match", [
    ("shapes:res=2", "res=2"), ("shapes:diversity=1.5", "diversity=1.5"), ("shapes:colour=3", "colour=3"),
    ("shapes:n=ten", "n='ten'"), ("mnist", "not a known source"), ("cifar10", "needs a path"),
])
def test_bad_source_specs(spec, match):
    with pytest.raises(UsageError, match=match):
        load_source(spec)


def test_path_sources_become_absolute_for_jobs_run_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for kind in ("cifar10", "zip", "folder", "npz"):  # every kind whose argument is a path
        assert absolute_spec(f"{kind}:rel/x") == f"{kind}:{tmp_path / 'rel' / 'x'}"
        assert absolute_spec(f"{kind}:/abs/x") == f"{kind}:/abs/x"
    for spec in ("digits", "shapes", "shapes:res=8,n=20"):  # no path: as it is
        assert absolute_spec(spec) == spec


def test_loaders_import_the_shared_module_not_the_table():
    """The table of sources imports the loaders; a loader that imported the table back would be a cycle."""
    import ast
    import inspect

    import diffmem.data.sources as table

    modules = {inspect.getmodule(k.load) for k in SOURCES.values()} - {table}
    modules |= {sys.modules["diffmem.data.digits"]}  # digits is reached through a small adapter in the table
    assert {m.__name__.rsplit(".", 1)[1] for m in modules} == {"digits", "shapes", "cifar10", "zipfolder", "files"}
    for m in modules:
        tree = ast.parse(inspect.getsource(m))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "diffmem.data.sources" not in imported, m.__name__
        assert "diffmem.data.source" in imported, m.__name__
