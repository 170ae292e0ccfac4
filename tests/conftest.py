import numpy as np
import pytest
import torch

# The suite's models and tensors are tiny: one intra-op thread is fastest for them, keeps numbers
# reproducible across machines, and does not oversubscribe the 2-core machines CI runs on.
# Subprocesses the tests start set OMP_NUM_THREADS=1 themselves.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
