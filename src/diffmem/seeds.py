"""Every fixed seed and seed purpose, in one place.

A run's randomness comes from its seeds (``data.seed``, ``train.seed``, per-sample seeds, …) split into
independent streams, one per purpose: ``[seed, PURPOSE, …]`` seeds a NumPy ``SeedSequence`` (or
``derive_seed``), so two purposes never share draws. The values are part of what makes a run
reproducible: changing one changes every draw made from it.
"""

# data/subsets.py: the streams of a dataset draw, seeded [data.seed, purpose] (nested) or [data.seed, purpose, size]
SUBSET_ORDER = 0  # the priority order of the candidates (the subset of size N is its first N)
RANDOM_LABELS = 1  # labels: random

# train/: the streams of a training run, seeded from train.seed
TRAIN_DATA_ORDER = 1  # the permutation of each epoch: [seed, 1, epoch]
TRAIN_NOISE = 2  # σ and noise of each step: derive_seed(seed, 2, step)
TRAIN_DROPOUT = 3  # dropout of each step and process: derive_seed(seed, 3, step, rank)
TRAIN_INIT = 4  # the initial weights: derive_seed(seed, 4)

# fixed seeds (no user seed: the same input gives the same result)
ROW_HASH = 0x5EED  # measure/vectors.py: the odd multipliers of the 64-bit row hash that finds duplicate rows
LAW_BOOTSTRAP = 0  # sweep/law.py: the bootstrap over sizes (the same onsets give the same interval)
