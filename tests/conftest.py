"""Every test starts from the same random state, so results do not depend on test order."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
