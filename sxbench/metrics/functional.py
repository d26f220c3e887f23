"""Pure tensor maths behind the weight-free metrics.

Every image argument is ``(B, 3, H, W)`` float32 in ``[0, 1]`` (sRGB); every function returns ``(B,)``
float32 unless stated otherwise. No state, no I/O, no global RNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sxbench.backbones.pooling import avg_pool2d, max_pool2d  # F's pools' values, faster

_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65 = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB ``(B, 3, H, W)`` in ``[0, 1]`` to CIE L*a*b* (D65): L in ``[0, 100]``, a and b roughly ``[-128, 127]``."""
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _XYZ_FROM_RGB.to(x), lin) / _D65.to(x).view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], 1)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma, ``(B, 1, H, W)``."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _ssim_window(channels: int, dtype: torch.dtype, device) -> torch.Tensor:
    """torchmetrics' SSIM window: 11-tap Gaussian, sigma 1.5, outer product of two normalised 1-D kernels,
    built with the same ops (so the same float32 weights), ``(C, 1, 11, 11)``."""
    t = torch.arange(start=-5.0, end=6.0, step=1, dtype=dtype, device=device)
    g = torch.exp(-torch.pow(t / 1.5, 2) / 2)
    g = (g / g.sum()).unsqueeze(0)
    return torch.matmul(g.t(), g).expand(channels, 1, 11, 11)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, data range 1) over RGB, in ``[-1, 1]``.

    Bit for bit what ``torchmetrics.functional.image.structural_similarity_index_measure(x, y, data_range=1.0,
    reduction="none")`` gives (the same op sequence: reflect padding of 5 px, the SSIM map averaged over the
    padded border too), without importing torchmetrics, which takes seconds (it pulls in torchvision).
    """
    if x.shape[-2:] != y.shape[-2:]:
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    y = y.to(x.dtype)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    c1, c2 = 0.01**2, 0.03**2
    x = F.pad(x, (5, 5, 5, 5), mode="reflect")
    y = F.pad(y, (5, 5, 5, 5), mode="reflect")
    window = _ssim_window(x.shape[1], x.dtype, x.device)
    mx, my, xx, yy, xy = F.conv2d(torch.cat((x, y, x * x, y * y, x * y)), window, groups=x.shape[1]).split(x.shape[0])
    mx2, my2, mxy = mx.pow(2), my.pow(2), mx * my
    vx = torch.clamp(xx - mx2, min=0.0)
    vy = torch.clamp(yy - my2, min=0.0)
    cov = xy - mxy
    upper = 2 * cov + c2
    lower = (vx + vy) + c2
    full = ((2 * mxy + c1) * upper) / ((mx2 + my2 + c1) * lower)
    return full.reshape(full.shape[0], -1).mean(-1).float()


def psnr(x: torch.Tensor, y: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB, data range 1; identical images give ``max_db``."""
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-max_db / 10)))).float()


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, any channel count."""
    k = _gaussian_kernel(sigma, x.device, x.dtype)
    c, r = x.shape[1], k.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _sobel(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=gray.dtype, device=gray.device) / 8
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(g, kx.view(1, 1, 3, 3)), F.conv2d(g, kx.t().reshape(1, 1, 3, 3))


def edge_map(x: torch.Tensor, threshold: float = 0.04, sigma: float = 1.0) -> torch.Tensor:
    """Thin edges: Sobel magnitude of blurred luma above ``threshold`` that is a local maximum across the
    edge (non-maximum suppression along the dominant gradient axis). Returns ``(B, 1, H, W)`` bool."""
    gx, gy = _sobel(gaussian_blur(luminance(x), sigma))
    mag = torch.hypot(gx, gy)
    p = F.pad(mag, (1, 1, 1, 1), mode="replicate")
    left, right = p[..., 1:-1, :-2], p[..., 1:-1, 2:]
    up, down = p[..., :-2, 1:-1], p[..., 2:, 1:-1]
    horizontal = gx.abs() >= gy.abs()
    peak = torch.where(horizontal, (mag >= left) & (mag >= right), (mag >= up) & (mag >= down))
    return (mag > threshold) & peak


def edge_f1(pred: torch.Tensor, ref: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """F1 of two ``(B, 1, H, W)`` bool edge maps, a match counting within ``tolerance`` pixels.

    Both empty gives 1; exactly one empty gives 0.
    """
    k = 2 * tolerance + 1
    pred_d = max_pool2d(pred.float(), k, 1, tolerance) > 0
    ref_d = max_pool2d(ref.float(), k, 1, tolerance) > 0
    n_pred, n_ref = pred.flatten(1).sum(1).float(), ref.flatten(1).sum(1).float()
    precision = (pred & ref_d).flatten(1).sum(1) / n_pred.clamp_min(1)
    recall = (ref & pred_d).flatten(1).sum(1) / n_ref.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    f1 = torch.where((n_pred == 0) & (n_ref == 0), torch.ones_like(f1), f1)
    return f1.float()


def _directions(n: int, dim: int, device, dtype) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(20240601)
    d = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).to(device=device, dtype=dtype)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 64, n_quantiles: int = 128) -> torch.Tensor:
    """Sliced 1-Wasserstein distance between two point sets per batch item.

    Args:
        x: ``(B, N, D)`` points; y: ``(B, M, D)`` points (N and M may differ).

    Returns:
        ``(B,)`` mean over ``n_projections`` fixed directions of the 1-D W1 distance, estimated on
        ``n_quantiles`` evenly spaced quantiles; in the units of the points.
    """
    dirs = _directions(n_projections, x.shape[-1], x.device, x.dtype)
    # (B, P, N) contiguous: sorting along the last, contiguous dimension is what makes this fast
    qx = _quantiles((dirs @ x.transpose(1, 2)).contiguous(), n_quantiles)
    qy = _quantiles((dirs @ y.transpose(1, 2)).contiguous(), n_quantiles)
    return (qx - qy).abs().mean((1, 2)).float()


def _quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
    """Linearly interpolated quantiles at ``(i + 0.5) / n`` along the last dim of ``(B, P, N)``; ``(B, P, n)``.

    Same definition as ``torch.quantile(..., interpolation="linear")``, computed with one sort.
    """
    s = _sorted(v)
    pos = ((torch.arange(n, device=v.device, dtype=torch.float64) + 0.5) / n) * (v.shape[-1] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(v.shape[-1] - 1)
    w = (pos - lo).to(v.dtype)
    return s[..., lo] * (1 - w) + s[..., hi] * w


def _sorted(v: torch.Tensor) -> torch.Tensor:
    """``v.sort(dim=-1).values``. On CPU through numpy's SIMD sort, over 10x faster than ``torch.sort`` (which
    also builds the permutation); a sort is exact, so the values are the same."""
    if v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64) and not v.requires_grad:
        return torch.from_numpy(np.sort(v.numpy(), axis=-1))
    return v.sort(dim=-1).values


def _max_points(lab: torch.Tensor, limit: int = 4096) -> torch.Tensor:
    """``(B, 3, H, W)`` to ``(B, N, 3)`` pixel colours, at most ``limit`` of them.

    Larger images are subsampled with a fixed pseudo-random pixel set (not a stride, which would alias with
    periodic textures); 4096 points estimate 128 quantiles well and keep the sort cheap.
    """
    pts = lab.flatten(2).transpose(1, 2)
    n = pts.shape[1]
    if n > limit:
        g = torch.Generator(device="cpu").manual_seed(n)
        idx = torch.randperm(n, generator=g)[:limit].sort().values.to(pts.device)
        pts = pts[:, idx]
    return pts


def color_swd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sliced Wasserstein distance between the Lab colour distributions of ``x`` and ``y`` (Lab units)."""
    return sliced_wasserstein(_max_points(rgb_to_lab(x)), _max_points(rgb_to_lab(y)))


def color_quantiles(x: torch.Tensor, n_projections: int = 64, n_quantiles: int = 128) -> torch.Tensor:
    """``(B, P, Q)``: each image's half of ``color_swd``, the quantiles of its Lab colours along the fixed
    directions; ``color_swd(x, y) == (color_quantiles(x) - color_quantiles(y)).abs().mean((1, 2))``, so a
    reference's quantiles can be computed once and compared with many outputs."""
    pts = _max_points(rgb_to_lab(x))
    dirs = _directions(n_projections, pts.shape[-1], pts.device, pts.dtype)
    return _quantiles((dirs @ pts.transpose(1, 2)).contiguous(), n_quantiles)


def filter_bank_responses(x: torch.Tensor) -> list[torch.Tensor]:
    """Responses of a fixed multi-scale filter bank, one ``(B, C, H_s, W_s)`` tensor per scale.

    Per scale (full, 1/2, 1/4 by 2×2 average pooling) on Lab scaled to about ``[-1, 1]``: the three blurred
    Lab channels (tone and colour), Gaussian first derivatives of L in x, y and both diagonals, and
    Laplacians of Gaussian of L at sigma 1 and 2 (blobs, dots, lines), 9 channels in all. Derivative
    channels are scaled ×8 so that texture and colour weigh comparably in the Gram matrix.
    """
    lab = rgb_to_lab(x) / torch.tensor([100.0, 110.0, 110.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    out = []
    for s in range(3):
        if s:
            lab = avg_pool2d(lab, 2)
        L = lab[:, :1]
        g1 = gaussian_blur(L, 1.0)
        gx, gy = _sobel(g1)
        d1, d2 = (gx + gy) / math.sqrt(2), (gx - gy) / math.sqrt(2)
        log1 = _laplacian(g1)
        log2 = _laplacian(gaussian_blur(L, 2.0))
        tone = gaussian_blur(lab, 1.0)
        out.append(torch.cat([tone, 8 * gx, 8 * gy, 8 * d1, 8 * d2, 8 * log1, 8 * log2], 1))
    return out


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)


def gram(f: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` features to ``(B, C, C)`` Gram matrices normalised by ``H·W``."""
    flat = f.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def gram_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over scales of the Frobenius distance between filter-bank Gram matrices of ``x`` and ``y``."""
    total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
    for fx, fy in zip(filter_bank_responses(x), filter_bank_responses(y)):
        total += (gram(fx) - gram(fy)).flatten(1).norm(dim=1).float()
    return total


def radial_log_spectrum(x: torch.Tensor, n_bins: int = 32) -> torch.Tensor:
    """Radially averaged log10 power spectrum of the Hann-windowed luma, ``(B, n_bins)`` from DC to Nyquist."""
    g = luminance(x)[:, 0]
    g = g - g.mean((-2, -1), keepdim=True)
    h, w = g.shape[-2:]
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=g.dtype, device=g.device),
                      torch.hann_window(w, periodic=False, dtype=g.dtype, device=g.device))
    power = torch.fft.fftshift(torch.fft.fft2(g * win), dim=(-2, -1)).abs() ** 2 / (h * w)
    fy = torch.arange(h, device=g.device, dtype=g.dtype) - h // 2
    fx = torch.arange(w, device=g.device, dtype=g.dtype) - w // 2
    r = torch.sqrt((fy.view(-1, 1) / (h / 2)) ** 2 + (fx.view(1, -1) / (w / 2)) ** 2)  # 1 = Nyquist
    idx = (r * n_bins).long().clamp_max(n_bins - 1).flatten()
    sums = torch.zeros(g.shape[0], n_bins, device=g.device, dtype=g.dtype).index_add_(1, idx, power.flatten(1))
    counts = torch.bincount(idx, minlength=n_bins).to(g.dtype).clamp_min(1)
    return torch.log10(sums / counts + 1e-10)


def high_frequency_distance(x: torch.Tensor, y: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Mean absolute difference of radial log10 power spectra above ``cutoff`` × Nyquist (decades).

    Measures whether the fine detail (texture, material grain, strokes) matches in amount and scale,
    independent of where it lies.
    """
    if x.shape[-2:] != y.shape[-2:]:
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    sx, sy = radial_log_spectrum(x), radial_log_spectrum(y)
    start = int(cutoff * sx.shape[1])
    return (sx[:, start:] - sy[:, start:]).abs().mean(1).float()
