import os

import pytest
import torch

# keep tests deterministic and light on the 2-core machines CI runs on
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
