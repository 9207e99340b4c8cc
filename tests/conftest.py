import os
import sys
from pathlib import Path

import pytest

# tests/ holds shared helpers (tiny_families) imported by several test modules.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
