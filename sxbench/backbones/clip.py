"""CLIP-family extractors: open_clip image towers, the CSD style descriptor and the LAION aesthetic head.

- ``CLIPImage``: an open_clip model from a folder in the hub's open_clip layout (``open_clip_config.json`` +
  ``open_clip_model.safetensors``, e.g. ``timm/vit_large_patch14_clip_224.openai``), loaded with open_clip's own
  ``local-dir:`` path; features ``embed`` (L2-normalised image embedding).
- ``CSD``: Somepalli et al.'s Contrastive Style Descriptor (learn2phoenix/CSD): a CLIP ViT visual tower without
  its projection plus the ``last_layer_style`` matrix, from the released ``checkpoint.pth``
  (``model_state_dict`` with ``backbone.*``, ``last_layer_style``, ``last_layer_content``, optionally prefixed
  ``module.``). The tower's shape is read from the tensors, as openai's ``build_model`` does.
- ``Aesthetic``: the LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor), an MLP
  on normalised CLIP ViT-L/14 image embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.models import FeatureExtractor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Normalize(FeatureExtractor):
    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def prep(self, images: torch.Tensor) -> torch.Tensor:
        return (self.resize(images.clamp(0, 1), "bicubic") - self.mean) / self.std


class CLIPImage(_Normalize):
    """An open_clip image tower; ``embed`` ``(B, D)`` L2-normalised."""

    def __init__(self, model: nn.Module, backbone: str) -> None:
        size = model.visual.image_size
        super().__init__(int(size[0] if isinstance(size, (tuple, list)) else size))
        self.backbone = backbone
        self.visual = model.visual.eval()

    @classmethod
    def from_folder(cls, folder: Path, backbone: str) -> "CLIPImage":
        import open_clip

        return cls(open_clip.create_model(f"local-dir:{folder}", device="cpu"), backbone)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embed": F.normalize(self.visual(self.prep(images)).float(), dim=-1)}


def _visual_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """An open_clip ``VisionTransformer`` shaped like the openai-format tensors in ``state`` (no projection)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    width = state["conv1.weight"].shape[0]
    patch = state["conv1.weight"].shape[-1]
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    grid = round((state["positional_embedding"].shape[0] - 1) ** 0.5)
    cfg = CLIPVisionCfg(layers=layers, width=width, head_width=64, patch_size=patch, image_size=grid * patch,
                        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width)
    visual = _build_vision_tower(embed_dim=width, vision_cfg=cfg, quick_gelu=True)
    visual.proj = None
    return visual


class CSD(_Normalize):
    """CSD style descriptor: ``style`` ``(B, 768)`` L2-normalised (``visual(x) @ last_layer_style``)."""

    backbone = "csd-vit-l"

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        state = {k.removeprefix("module."): v for k, v in state.items()}
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.") and k != "backbone.proj"}
        visual = _visual_from_state(bb)
        super().__init__(visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size)
        missing, unexpected = visual.load_state_dict(bb, strict=False)
        if missing or unexpected:
            raise ValueError(f"CSD backbone tensors do not fit a CLIP ViT: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.visual = visual.eval()
        self.register_buffer("style_proj", state["last_layer_style"].float())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.visual(self.prep(images)).float()
        return {"style": F.normalize(feats @ self.style_proj, dim=-1)}


class AestheticMLP(nn.Module):
    """The improved aesthetic predictor's head (keys ``layers.{0,2,4,6,7}.*``)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Aesthetic(FeatureExtractor):
    """LAION aesthetic score ``score`` ``(B,)`` (about 1–10) from a CLIP ViT-L/14 tower and the MLP head."""

    backbone = "aesthetic-laion"

    def __init__(self, clip: CLIPImage, head: AestheticMLP) -> None:
        super().__init__()
        self.clip, self.head = clip, head.eval()
        self.resolution = clip.resolution

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"score": self.head(self.clip(images)["embed"]).squeeze(-1)}
