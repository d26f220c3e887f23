"""``gatys``: neural style transfer by optimisation (Gatys, Ecker & Bethge, CVPR 2016).

The output's pixels are optimised so that its VGG-19 ``relu4_2`` features match the content's and its Gram
matrices at ``relu1_1``–``relu5_1`` match the style's. The optimisation starts from the content with the style's
colour statistics (Reinhard et al.'s Lab mean/std transfer, ``init="reinhard"``, the default) or from the content
itself (``init="content"``, the paper's choice for its content-preserving results). With a short optimisation, as
the fast preset's, starting from the content leaves the content's colours nearly untouched (the Gram loss moves
colour slowly), which the colour terms of the style metrics punish; starting colour-matched leaves the optimisation
the texture to do. Measured on 30 synth pairs (texture, material, stroke), ``style_gram``: content start 0.60 /
0.57 / 0.74, reinhard start 0.44 / 0.25 / 0.64 (``reinhard`` itself: 0.65 / 0.49 / 1.58). The VGG-19 is the
registry backbone (``sxbench weights fetch vgg19``). Adam optimises a batch at once (per-image losses are
independent); L-BFGS, as in the paper, runs one image at a time.

``preset="fast"`` (the default: 40 Adam steps at 128 px, about 6 s per image on 2 CPU cores) keeps a benchmark
run on a CPU within budget;
``preset="quality"`` (300 L-BFGS iterations at 512 px) is for real use on a GPU. Any of ``iterations``,
``resolution``, ``optimizer``, ``lr``, ``style_weight`` overrides the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from baselines.reinhard import reinhard_tensor
from sxbench.imageio import to_tensor
from sxbench.interfaces import Method

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
INITS = ("reinhard", "content")
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"iterations": 40, "resolution": 128, "optimizer": "adam", "lr": 0.06, "style_weight": 3e3},
    "quality": {"iterations": 300, "resolution": 512, "optimizer": "lbfgs", "lr": 1.0, "style_weight": 3e3},
}


def gram(feat: torch.Tensor) -> torch.Tensor:
    """``F Fᵀ / (C·H·W)`` per image, ``(B, C, C)``."""
    f = feat.flatten(2)
    return f @ f.transpose(1, 2) / (f.shape[1] * f.shape[2])


class Gatys(Method):
    name = "gatys"
    takes_weights_dir = True
    reference = "Gatys, Ecker & Bethge, Image Style Transfer Using Convolutional Neural Networks, CVPR 2016"
    licence = "code: Apache-2.0 (this project); VGG-19 weights: CC BY 4.0 (registry, 8-bit)"

    def __init__(self, *, device: str | torch.device = "cpu", preset: str = "fast", iterations: int | None = None,
                 resolution: int | None = None, optimizer: str | None = None, lr: float | None = None,
                 style_weight: float | None = None, init: str = "reinhard", weights_dir: str | None = None) -> None:
        from sxbench.weights import load_extractor

        if preset not in PRESETS:
            raise ValueError(f"gatys: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = dict(PRESETS[preset])
        for k, v in (("iterations", iterations), ("resolution", resolution), ("optimizer", optimizer), ("lr", lr),
                     ("style_weight", style_weight)):
            if v is not None:
                p[k] = v
        if init not in INITS:
            raise ValueError(f"gatys: init must be one of {', '.join(INITS)}, not {init!r}")
        if p["optimizer"] not in ("adam", "lbfgs"):
            raise ValueError(f"gatys: optimizer must be 'adam' or 'lbfgs', not {p['optimizer']!r}")
        self.vgg = load_extractor("vgg19", device, Path(weights_dir) if weights_dir else None)
        super().__init__(device=device, preset=preset, iterations=int(p["iterations"]), resolution=int(p["resolution"]),
                         optimizer=p["optimizer"], lr=float(p["lr"]), style_weight=float(p["style_weight"]), init=init,
                         encoder_sha256=self.vgg.weights_sha256)

    def _features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.vgg.layers(x, layers, resize=False)

    def _loss(self, x: torch.Tensor, content_feat: torch.Tensor, style_grams: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-image loss ``(B,)``: content MSE + style_weight · Σ Gram MSE (features on the Caffe scale, /1e3)."""
        f = self._features(x, (CONTENT_LAYER, *STYLE_LAYERS))
        loss = (f[CONTENT_LAYER] - content_feat).pow(2).flatten(1).mean(1) / 1e3
        style = sum((gram(f[n]) - style_grams[n]).pow(2).flatten(1).mean(1) for n in STYLE_LAYERS)
        return loss + self.params["style_weight"] * style / 1e6

    def _resize(self, x: torch.Tensor, side: int) -> torch.Tensor:
        if x.shape[-1] == side and x.shape[-2] == side:
            return x
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        p = self.params
        res = p["resolution"]
        c = to_tensor(list(contents)).to(self.device)
        size = c.shape[-2:]
        c = self._resize(c, res)
        s = [self._resize(to_tensor([x]).to(self.device), res) for x in styles]
        with torch.no_grad():
            cf = self._features(c, (CONTENT_LAYER,))[CONTENT_LAYER]
            grams = [{n: gram(v) for n, v in self._features(x, STYLE_LAYERS).items()} for x in s]
            sg = {n: torch.cat([g[n] for g in grams]) for n in STYLE_LAYERS}
        x0 = c if p["init"] == "content" else torch.stack([reinhard_tensor(ci, si[0]) for ci, si in zip(c, s)])
        if p["optimizer"] == "adam":
            out = self._adam(x0, cf, sg)
        else:
            out = torch.cat([self._lbfgs(x0[i : i + 1], cf[i : i + 1], {n: v[i : i + 1] for n, v in sg.items()})
                             for i in range(len(c))])
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False, antialias=True)
        return list(out.clamp(0, 1).cpu())

    def _adam(self, x0: torch.Tensor, cf: torch.Tensor, sg: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.params["lr"])
        for _ in range(self.params["iterations"]):
            opt.zero_grad(set_to_none=True)
            self._loss(x, cf, sg).sum().backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        return x.detach()

    def _lbfgs(self, x0: torch.Tensor, cf: torch.Tensor, sg: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        n = self.params["iterations"]
        opt = torch.optim.LBFGS([x], lr=self.params["lr"], max_iter=n, max_eval=2 * n, history_size=50,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            # clamp for the loss, gradient straight through: pixels at exactly 0 or 1 (common in 8-bit inputs)
            # would otherwise get no gradient and never move
            clamped = x + (x.clamp(0, 1) - x).detach()
            loss = self._loss(clamped, cf, sg).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return x.detach().clamp(0, 1)


__all__ = ["Gatys", "INITS", "PRESETS", "gram"]
