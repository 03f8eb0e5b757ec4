"""torch.distributed helpers without a process group: rank slices of a store and rank devices (the rank-sliced
harvest and DDP training themselves are in tests/integration/test_distributed.py)."""
import pytest
import torch

from thinkdiff import distributed as D
from thinkdiff.store import part_bounds


def test_part_bounds_and_rank_devices():
    for n in (0, 1, 5, 8, 101):
        for w in (1, 2, 3, 4):
            parts = [part_bounds(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[r][1] == parts[r + 1][0] for r in range(w - 1))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    with pytest.raises(ValueError, match="rank"):
        part_bounds(4, 2, 2)
    assert D.rank_devices(D.World(rank=1, world_size=2, backend="gloo")) == (torch.device("cpu"),) * 2
    with pytest.raises(ValueError, match="placement"):
        D.init(placement="diagonal")

