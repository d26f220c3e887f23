"""The sxbench plugin: StyleExpert and its two ablations as ``sxbench`` methods.

This is the only module of ``styleexpert`` that imports ``sxbench``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from sxbench.imageio import to_tensor
from sxbench.interfaces import Method, Routing

CHECKPOINT_DIR_ENV = "SXBENCH_STYLEEXPERT_CHECKPOINTS"
PACKAGED = Path(__file__).parent / "checkpoints"


def find_checkpoint(name: str, checkpoint: str | os.PathLike | None) -> Path:
    """A checkpoint folder: ``checkpoint`` if given, else ``$SXBENCH_STYLEEXPERT_CHECKPOINTS/<name>``, else the
    one shipped in the package (``styleexpert/checkpoints/<name>``)."""
    if checkpoint is not None:
        candidates = [Path(checkpoint)]
    else:
        candidates = ([Path(os.environ[CHECKPOINT_DIR_ENV]) / name] if os.environ.get(CHECKPOINT_DIR_ENV) else []) + [PACKAGED / name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name}: no checkpoint at {where}; put a folder written by styleexpert.io.save_checkpoint "
        f"(config.json + safetensors) there, or pass --param {name}.checkpoint=PATH"
    )


class StyleExpertMethod(Method):
    """StyleExpert: a style-routed mixture of LoRA experts in a Flux-Kontext transformer."""

    name = "styleexpert"
    variant = "moe"
    version = "1"
    reference = "Zhu et al., Mixture of Style Experts for Diverse Image Stylization, CVPR 2026 (arXiv 2603.16649)"
    deterministic = False

    def __init__(self, *, device: str | torch.device = "cpu", checkpoint: str | None = None, steps: int | None = None,
                 guidance: float | None = None) -> None:
        from styleexpert.io import load_checkpoint
        from styleexpert.pipeline import StyleExpertPipeline

        path = find_checkpoint(self.name, checkpoint)
        self.model = load_checkpoint(path, device=device)
        if self.model.variant != self.variant:
            raise ValueError(f"{path}: holds a {self.model.variant!r} model, {self.name} needs {self.variant!r}")
        self.pipe = StyleExpertPipeline(self.model)
        sampling = self.model.config["sampling"]
        super().__init__(device=device, checkpoint=str(path), steps=steps or sampling["steps"],
                         guidance=guidance if guidance is not None else sampling.get("guidance"),
                         weights_sha256=_digest(path / "adapters.safetensors"))
        self._routing: Routing | None = None

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        res = self.model.config["sampling"]["resolution"]
        size = contents[0].size

        def prep(images: Sequence[Image.Image]) -> torch.Tensor:
            return to_tensor([im.resize((res, res), Image.Resampling.LANCZOS) if im.size != (res, res) else im for im in images])

        out = self.pipe(prep(contents), prep(styles), seeds=seeds, num_inference_steps=self.params["steps"],
                        guidance_scale=self.params["guidance"])
        images = out.images
        if images.shape[-2:] != (size[1], size[0]):
            images = torch.nn.functional.interpolate(images, size=(size[1], size[0]), mode="bicubic",
                                                     antialias=True, align_corners=False).clamp(0, 1)
        if out.routing:
            self._routing = Routing({k: v.indices.cpu() for k, v in out.routing.items()},
                                    {k: v.weights.cpu() for k, v in out.routing.items()},
                                    self.model.config["moe"]["num_experts"])
        return list(images.cpu())

    def routing(self) -> Routing | None:
        return self._routing

    @classmethod
    def inspect(cls, preset: str = "full") -> list[str]:
        """Lines describing the model at ``preset`` size, built on the meta device."""
        from styleexpert.stats import format_stats, summarize

        return format_stats(summarize(preset))


class StyleExpertLoRA(StyleExpertMethod):
    """Ablation: one LoRA of rank E·r in every wrapped linear, no router."""

    name = "styleexpert-lora"
    variant = "lora"


class StyleExpertNoPrior(StyleExpertMethod):
    """Ablation: the mixture, routed by a style encoder whose projector was never trained."""

    name = "styleexpert-noprior"
    variant = "noprior"


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__: list[Any] = ["StyleExpertLoRA", "StyleExpertMethod", "StyleExpertNoPrior", "find_checkpoint"]
