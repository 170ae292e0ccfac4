"""A synthetic source with known structure: procedurally drawn shapes.

``shapes:res=16,classes=10,diversity=0.5,n=5000,channels=3,seed=0`` draws ``n`` images of
``res``×``res`` pixels. Image i belongs to class ``i mod classes``; a class is a shape (disk,
square, triangle, cross, ring, diamond, bar, half-disk, frame, two dots; repeating beyond ten
classes) in a class colour (hues evenly spaced). ``diversity`` ∈ [0, 1] scales every intra-class
variation — position, size, rotation, colour jitter and background — so that at diversity 0 all
images of a class are identical (the set holds exactly ``classes`` distinct images) and at 1 they
vary most. Images are anti-aliased by 4×4 supersampling. Everything is a deterministic function
of ``seed``, and the first m images are the same for every n ≥ m.
"""

from __future__ import annotations

import math

import numpy as np

from diffmem.data.source import Source
from diffmem.errors import bad

SHAPE_NAMES = ("disk", "square", "triangle", "cross", "ring", "diamond", "bar", "halfdisk", "frame", "dots")
DEFAULTS = {"res": 16, "classes": 10, "diversity": 0.5, "n": 5000, "channels": 3, "seed": 0}
SUPERSAMPLE = 4
_CHUNK = 256  # images rendered at once
_N_PARAMS = 8  # uniforms per image: dx, dy, scale, angle, 3 colour jitters, background


def parse_shapes_args(arg: str, option: str, spec: str) -> dict[str, float | int]:
    """``"res=16,classes=4"`` → the full parameter dict (defaults filled in), validated."""
    params: dict[str, float | int] = dict(DEFAULTS)
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in DEFAULTS or not eq:
            raise bad(f"{option}: {spec!r}", item, f"KEY=VALUE with KEY one of {', '.join(DEFAULTS)}")
        try:
            params[key] = float(value) if key == "diversity" else int(value)
        except ValueError:
            kind = "a number in [0, 1]" if key == "diversity" else "an integer"
            raise bad(f"{option}: {spec!r}", value, kind, shown=f"{key}={value!r}") from None
    checks = {
        "res": (params["res"] >= 4, "an integer ≥ 4"),
        "classes": (params["classes"] >= 1, "an integer ≥ 1"),
        "diversity": (0.0 <= params["diversity"] <= 1.0, "a number in [0, 1]"),
        "n": (params["n"] >= 1, "an integer ≥ 1"),
        "channels": (params["channels"] in (1, 3), "1 or 3"),
        "seed": (params["seed"] >= 0, "an integer ≥ 0"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise bad(f"{option}: {spec!r}", params[key], expected, shown=f"{key}={params[key]!r}")
    return params


def _inside(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indicator of shape ``kind`` in its unit frame (u, v ∈ [−1, 1] spans the shape's box)."""
    au, av = np.abs(u), np.abs(v)
    r2 = u * u + v * v
    if kind == 0:  # disk
        return r2 <= 1.0
    if kind == 1:  # square
        return np.maximum(au, av) <= 0.8
    if kind == 2:  # triangle, apex up
        return (v >= -0.7) & (v <= 0.9 - 1.6 * au)
    if kind == 3:  # cross
        return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))
    if kind == 4:  # ring
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if kind == 5:  # diamond
        return au + av <= 1.0
    if kind == 6:  # bar
        return (au <= 0.95) & (av <= 0.3)
    if kind == 7:  # half-disk
        return (r2 <= 1.0) & (v >= -0.1)
    if kind == 8:  # square frame
        m = np.maximum(au, av)
        return (m <= 0.85) & (m >= 0.55)
    # two dots
    return ((u - 0.5) ** 2 + av * av <= 0.2) | ((u + 0.5) ** 2 + av * av <= 0.2)


def class_colour(c: int, classes: int) -> np.ndarray:
    """RGB in [0, 1] of class c: hue c/classes at saturation 0.8, value 0.9."""
    h, s, val = (c / classes) % 1.0, 0.8, 0.9
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0  # HSV → RGB, channel-wise formula
    return val - val * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_shapes(res: int, classes: int, diversity: float, n: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 n×channels×res×res images of the shapes source (see the module docstring)."""
    U = np.random.default_rng(seed).random((n, _N_PARAMS))  # row i: image i's uniforms (prefix-stable)
    d = diversity
    cls = np.arange(n) % classes
    kinds = cls % len(SHAPE_NAMES)
    # per-image geometry in image coordinates [−1, 1]²
    cx = d * (U[:, 0] - 0.5) * 0.7
    cy = d * (U[:, 1] - 0.5) * 0.7
    scale = 0.55 * (1.0 + d * (U[:, 2] - 0.5) * 0.7)
    angle = d * (U[:, 3] - 0.5) * 2.0 * math.pi
    palette = np.stack([class_colour(c, classes) for c in range(classes)])
    colour = np.clip(palette[cls] + d * (U[:, 4:7] - 0.5) * 0.5, 0.0, 1.0)  # n×3
    background = 0.1 + d * U[:, 7] * 0.3
    if channels == 1:  # luminance (ITU-R BT.601 weights)
        colour = colour @ np.array([[0.299], [0.587], [0.114]])
    side = res * SUPERSAMPLE
    g = ((np.arange(side) + 0.5) / side * 2.0 - 1.0).astype(np.float32)
    Y, X = np.meshgrid(g, g, indexing="ij")
    f32 = {k: v.astype(np.float32) for k, v in {"cx": cx, "cy": cy, "scale": scale, "angle": angle}.items()}
    out = np.empty((n, channels, res, res), dtype=np.uint8)
    for s in range(0, n, _CHUNK):
        sl = slice(s, min(n, s + _CHUNK))
        dx = X[None] - f32["cx"][sl, None, None]  # float32: the geometry is drawn at 4× resolution
        dy = Y[None] - f32["cy"][sl, None, None]
        cos, sin = np.cos(f32["angle"][sl])[:, None, None], np.sin(f32["angle"][sl])[:, None, None]
        inv = 1.0 / f32["scale"][sl, None, None]
        u = (cos * dx + sin * dy) * inv
        v = (cos * dy - sin * dx) * inv
        v = -v  # image rows grow downwards; shapes are defined with v up
        mask = np.zeros(u.shape, dtype=bool)
        for kind in np.unique(kinds[sl]):
            idx = np.nonzero(kinds[sl] == kind)[0]
            mask[idx] = _inside(int(kind), u[idx], v[idx])
        cov = mask.reshape(-1, res, SUPERSAMPLE, res, SUPERSAMPLE).sum(axis=(2, 4)) / SUPERSAMPLE**2  # coverage
        img = background[sl, None, None, None] * (1.0 - cov[:, None]) + colour[sl, :, None, None] * cov[:, None]
        out[sl] = np.floor(img * 255.0 + 0.5).astype(np.uint8)
    return out


def load_shapes(arg: str, option: str = "data.source", spec: str = "shapes") -> Source:
    """The shapes source named by ``spec`` (arguments ``arg``), labels = class index."""
    p = parse_shapes_args(arg, option, spec)
    images = render_shapes(int(p["res"]), int(p["classes"]), float(p["diversity"]), int(p["n"]),
                           int(p["channels"]), int(p["seed"]))
    classes = int(p["classes"])
    labels = (np.arange(int(p["n"])) % classes).astype(np.int64)
    names = tuple(f"{c}-{SHAPE_NAMES[c % len(SHAPE_NAMES)]}" for c in range(classes))
    if int(p["n"]) < classes:  # classes with no image do not exist in this source
        names = names[: int(p["n"])]
    return Source(images=images, labels=labels, class_names=names, spec=spec, inputs={"shapes": p})
