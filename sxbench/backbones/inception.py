"""The TF FID Inception-v3 graph (NVlabs' ``inception-2015-12-05`` as TorchScript) as an eager module.

The pinned weights file is a TorchScript module; running its graph eagerly with the same ATen ops in the same
order gives the same features bit for bit, and lets the pooling layers use faster exact kernels
(``sxbench.backbones.pooling``): ATen's CPU max and average pools were a fifth of the forward's time.

``FIDInceptionV3(...).state_dict()`` has exactly the keys and shapes of the TorchScript module's, so
``from_torchscript`` loads it with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.pooling import avg_pool2d, max_pool2d

__all__ = ["FIDInceptionV3", "from_torchscript"]


class _Conv(nn.Module):
    """The graph's ``Conv2dLayer``: bias-free conv, batch norm without scale (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.empty(cout))
        self.mean = nn.Parameter(torch.empty(cout))
        self.var = nn.Parameter(torch.empty(cout))
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001), inplace=True)


def _seq(*convs: _Conv) -> nn.Sequential:
    return nn.Sequential(*convs)


class _Reduce(nn.Module):
    """Stride-2 3x3 max pool (the stem's ``pool0``/``pool1`` and the reduction blocks' ``pool``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, 3, 2)


class _BranchPool(nn.Module):
    """The pool branch's 3x3 stride-1 pool: average (padding excluded from the count) or max."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return max_pool2d(x, 3, 1, 1)


class _PoolConv(nn.Sequential):
    """``tower_2`` of the A and C blocks: average pool, then a 1x1 conv (keys ``conv.*``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = _BranchPool("avg")
        self.conv = _Conv(cin, cout, 1)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = _Conv(cin, 64, 1)
        self.tower = nn.Sequential()
        self.tower.conv, self.tower.conv_1 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.tower_1 = nn.Sequential()
        self.tower_1.conv, self.tower_1.conv_1 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.tower_1.conv_2 = _Conv(96, 96, 3, padding=1)
        self.tower_2 = _PoolConv(cin, pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = _Conv(cin, 384, 3, stride=2)
        self.tower = nn.Sequential()
        self.tower.conv, self.tower.conv_1 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.tower.conv_2 = _Conv(96, 96, 3, stride=2)
        self.pool = _Reduce()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(k=(1, 7), padding=(0, 3)), dict(k=(7, 1), padding=(3, 0))
        self.conv = _Conv(cin, 192, 1)
        self.tower = nn.Sequential()
        self.tower.conv, self.tower.conv_1, self.tower.conv_2 = (
            _Conv(cin, c7, 1), _Conv(c7, c7, **row), _Conv(c7, 192, **col))
        self.tower_1 = nn.Sequential()
        self.tower_1.conv, self.tower_1.conv_1, self.tower_1.conv_2 = (
            _Conv(cin, c7, 1), _Conv(c7, c7, **col), _Conv(c7, c7, **row))
        self.tower_1.conv_3, self.tower_1.conv_4 = _Conv(c7, c7, **col), _Conv(c7, 192, **row)
        self.tower_2 = _PoolConv(cin, 192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = nn.Sequential()
        self.tower.conv, self.tower.conv_1 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.tower_1 = nn.Sequential()
        self.tower_1.conv, self.tower_1.conv_1 = _Conv(cin, 192, 1), _Conv(192, 192, (1, 7), padding=(0, 3))
        self.tower_1.conv_2, self.tower_1.conv_3 = _Conv(192, 192, (7, 1), padding=(3, 0)), _Conv(192, 192, 3, stride=2)
        self.pool = _Reduce()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.conv = _Conv(cin, 320, 1)
        self.tower_conv = _Conv(cin, 384, 1)
        self.tower_mixed_conv = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = _Conv(cin, 448, 1)
        self.tower_1_conv_1 = _Conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _BranchPool(pool)
        self.tower_2_conv = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInceptionV3(nn.Module):
    """Images ``(B, 3, 299, 299)`` scaled to ``[-1, 1]`` to the 2048-d pool3 features ``(B, 2048)``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        L = self.layers
        L.conv, L.conv_1, L.conv_2 = _Conv(3, 32, 3, stride=2), _Conv(32, 32, 3), _Conv(32, 64, 3, padding=1)
        L.pool0 = _Reduce()
        L.conv_3, L.conv_4 = _Conv(64, 80, 1), _Conv(80, 192, 3)
        L.pool1 = _Reduce()
        L.mixed, L.mixed_1, L.mixed_2 = _InceptionA(192, 32), _InceptionA(256, 64), _InceptionA(288, 64)
        L.mixed_3 = _InceptionB(288)
        L.mixed_4, L.mixed_5, L.mixed_6, L.mixed_7 = (
            _InceptionC(768, 128), _InceptionC(768, 160), _InceptionC(768, 160), _InceptionC(768, 192))
        L.mixed_8 = _InceptionD(768)
        L.mixed_9, L.mixed_10 = _InceptionE(1280, "avg"), _InceptionE(2048, "max")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[1] != 3:
            raise ValueError(f"expected 3 channels, got {img.shape[1]}")
        return F.avg_pool2d(self.layers(img), 8, 8, 0).reshape(-1, 2048)  # pool2


def from_torchscript(module: nn.Module) -> nn.Module:
    """The eager ``FIDInceptionV3`` holding ``module``'s weights when ``module`` is the FID graph (a ``net``
    whose state dict has the same keys and shapes), else ``module`` itself (e.g. the tests' small stand-in)."""
    eager = FIDInceptionV3()
    net = getattr(module, "net", None)
    theirs = net.state_dict() if isinstance(net, nn.Module) else {}
    ours = eager.state_dict()
    if theirs.keys() != ours.keys() or any(theirs[k].shape != v.shape for k, v in ours.items()):
        return module
    eager.load_state_dict(theirs, strict=True)
    return eager.eval()
