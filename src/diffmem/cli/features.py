"""The feature-space options of ``diffmem measure`` (``--features`` and its companions) and their output lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffmem.cli.common import parse_fraction
from diffmem.config import MeasureConfig
from diffmem.errors import UsageError
from diffmem.extras import require

FEATURE_HELP = ("pixels (default: the reference study's metric), MODEL.onnx (an image encoder run with "
                "onnxruntime, the [onnx] extra), or precomputed (embeddings .npz files: 'features' float32 N×D, "
                "optional 'names')")
PREPROCESS_HELP = ("with MODEL.onnx: preprocessing over MODEL.json beside the model; keys size (H or H,W), "
                   "resample (bilinear|bicubic|nearest), value_range (lo,hi; default 0,1), mean, std (per channel), "
                   "channels (rgb|bgr), layout (auto|nchw|nhwc), input, output (names), batch")
FEATURE_ONLY = ("samples_features", "train_features", "distance", "similarity", "preprocess")


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("feature space (measure in an embedding space instead of pixels)")
    g.add_argument("--features", default="pixels", metavar="SPACE", help=FEATURE_HELP)
    g.add_argument("--samples-features", metavar="FILE.npz",
                   help="with precomputed: embeddings of --samples, one row per image in the same order (or "
                        "matched by 'names'); default: --samples is itself such a file")
    g.add_argument("--train-features", metavar="FILE.npz", help="with precomputed: embeddings of --train")
    g.add_argument("--distance", choices=("cosine", "l2"), metavar="D",
                   help="distance of the d1/d2 rule in feature space: cosine (1 - cos, default) or l2")
    g.add_argument("--similarity", metavar="TAU",
                   help="second criterion: a copy when the cosine similarity to the most similar training "
                        "image is >= TAU (default 0.5)")
    g.add_argument("--preprocess", nargs="+", action="extend", metavar="KEY=VALUE", help=PREPROCESS_HELP)


def feature_space(args: argparse.Namespace):
    """The checked :class:`FeatureSpace` of the options, or None for pixels (refusing feature-only options)."""
    from diffmem.measure.features import FeatureSpace, check_space, parse_space  # torch: only when measuring

    kind, model = parse_space(args.features)
    if kind == "pixels":
        for name in FEATURE_ONLY:
            if getattr(args, name) is not None:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option}: applies to a feature space only; expected --features MODEL.onnx or "
                                 "--features precomputed")
        return None
    if kind == "onnx":
        require("onnxruntime", "onnx", "--features")  # before any work: one line naming the extra
    for option, value in (("--samples-features", args.samples_features), ("--train-features", args.train_features),
                          ("--preprocess", args.preprocess)):
        if value is not None and (option == "--preprocess") != (kind == "onnx"):
            raise UsageError(f"{option}: does not apply to --features {args.features}; expected "
                             f"{'--features MODEL.onnx' if option == '--preprocess' else '--features precomputed'}")
    similarity = 0.5 if args.similarity is None else parse_fraction(args.similarity, "--similarity")
    return check_space(FeatureSpace(kind=kind, model=model, distance=args.distance or "cosine",
                                    similarity=similarity))


def measure_in_space(args: argparse.Namespace, space, cfg: MeasureConfig, load: Callable[[str, str], Any], *,
                     progress: bool):
    """Embed or read both sides, then measure both criteria: (measurement, sample images, training images).

    ``load(path, option)`` reads an image set. Images are None where only vectors are known (no grid figure).
    """
    from diffmem.measure.features import (  # torch: only when measuring
        FEATURES_LAYOUT,
        load_embeddings,
        measure_features,
        with_images,
    )

    describe: dict[str, Any] = {}
    if space.kind == "onnx":
        from diffmem.devices import resolve_device  # torch and the [onnx] extra: only for an ONNX encoder
        from diffmem.measure.encoder import OnnxEncoder, load_preprocess, parse_preprocess_flags

        pre = load_preprocess(space.model, parse_preprocess_flags(args.preprocess))
        device = resolve_device(cfg.device, "measure.device")
        encoder = OnnxEncoder(space.model, pre, device=str(device))  # refuses a bad model now
        describe = encoder.describe()
        samples, train = load(args.samples, "--samples"), load(args.train, "--train")
        if encoder.size is None and samples.shape[1:] != train.shape[1:]:
            raise UsageError(f"--preprocess size: the model takes any image size, and --samples are "
                             f"{'×'.join(map(str, samples.shape[1:]))} but --train are "
                             f"{'×'.join(map(str, train.shape[1:]))}; expected one size for both, e.g. "
                             f"--preprocess size={train.shape[1]}")
        s_vec = encoder(samples.images, what="samples", progress=progress)
        t_vec = encoder(train.images, what="training images", progress=progress)
        seeds = samples.seeds
    else:
        sides = []
        for option, path, feats in (("--samples", args.samples, args.samples_features),
                                    ("--train", args.train, args.train_features)):
            if feats is None:
                if not (str(path).lower().endswith(".npz") and Path(path).is_file()):
                    raise UsageError(f"{option}: {str(path)!r} is not an embeddings .npz; with --features precomputed "
                                     f"expected one ({FEATURES_LAYOUT}) or {option}-features FILE.npz for these images")
                sides.append(load_embeddings(path, option))
            else:
                f_option = option + "-features"
                sides.append(with_images(load_embeddings(feats, f_option), load(path, option), f_option, option))
        (s_emb, t_emb) = sides
        s_vec, t_vec = s_emb.vectors, t_emb.vectors
        samples, train = s_emb.images, t_emb.images
        seeds = samples.seeds if samples is not None and samples.seeds is not None else s_emb.seeds
        describe = {"samples_names": s_emb.names is not None, "train_names": t_emb.names is not None}
    m = measure_features(s_vec, t_vec, space, cfg, seeds=seeds, describe=describe, progress=progress)
    return m, samples, train


def format_feature_lines(s: dict[str, Any]) -> str:
    """Terminal lines for the feature space and the similarity criterion ('' for pixels)."""
    if "similarity" not in s:
        return ""
    f, c = s["feature_space"], s["similarity"]
    source = f"model {f['model']} (sha256 {f['model_sha256'][:16]}…)" if "model" in f else "precomputed embeddings"
    return "\n".join([
        f"feature space:       {f['dim']}-d {f['dtype']} features from {source}; the d1/d2 rule above uses "
        f"the {'cosine distance 1 - cos' if f['distance'] == 'cosine' else 'l2 distance'}",
        f"similarity copies:   {c['ratio']:.4f}  ({c['confidence']:.0%} Wilson interval {c['ci_low']:.4f} – "
        f"{c['ci_high']:.4f}): {c['n_similar']:,} of {c['n_samples']:,} samples have cosine similarity "
        f">= {c['threshold']:.4g} to their most similar training image (median of that cosine "
        f"{c['median_max_cosine']:.4f})",
    ]) + "\n"
