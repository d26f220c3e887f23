"""sxbench.backbones.pooling: the fast pools give ATen's ``F.max_pool2d`` / ``F.avg_pool2d`` values bit for bit."""

import pytest
import torch
import torch.nn.functional as F

from sxbench.backbones.pooling import MaxPool2d, avg_pool2d, max_pool2d

SHAPES = [(1, 3, 5, 6), (2, 4, 7, 4), (3, 5, 9, 13), (2, 16, 35, 35), (1, 4, 37, 37)]
WINDOWS = [(k, s, p) for k in (2, 3, 5) for s in (1, 2, 3) for p in range(k // 2 + 1)]


def _inputs(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    return [x, x.relu(), x.double()]  # signed, post-ReLU (ties at 0), float64


@pytest.mark.parametrize("shape", SHAPES)
def test_pools_equal_aten_bitwise(shape):
    for x in _inputs(shape):
        for k, s, p in WINDOWS:
            if min(shape[-2:]) + 2 * p < k:
                continue
            assert torch.equal(max_pool2d(x, k, s, p), F.max_pool2d(x, k, s, p)), (k, s, p)
            for include in (True, False):
                assert torch.equal(avg_pool2d(x, k, s, p, count_include_pad=include),
                                   F.avg_pool2d(x, k, s, p, count_include_pad=include)), (k, s, p, include)
    assert torch.equal(MaxPool2d(3, stride=1)(x), torch.nn.MaxPool2d(3, stride=1)(x))


def test_pools_propagate_nan_and_inf_like_aten():
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    x[0, 0, 3, 3], x[1, 1, 0, 0], x[1, 2, 4, 4] = float("nan"), float("inf"), -float("inf")
    for k, s, p in [(3, 1, 1), (3, 2, 0), (2, 1, 0)]:
        torch.testing.assert_close(max_pool2d(x, k, s, p), F.max_pool2d(x, k, s, p), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(avg_pool2d(x, k, s, p, count_include_pad=False),
                                   F.avg_pool2d(x, k, s, p, count_include_pad=False), rtol=0, atol=0, equal_nan=True)
