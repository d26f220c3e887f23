"""DreamSim style distance (the paper's DreamSim score): output vs style reference on the DreamSim ensemble."""

from __future__ import annotations

from sxbench.backbones.dreamsim import dreamsim_distance
from sxbench.metrics.backbone import BackboneMetric
from sxbench.records import MetricInfo


class DreamSimStyle(BackboneMetric):
    backbone_name = "dreamsim-ensemble"
    roles, fields = ("output", "style"), ("embed",)
    info = MetricInfo(
        "dreamsim_style", False, (0.0, 200.0), "style", frozenset({"style"}), backbone="dreamsim-ensemble",
        description="DreamSim distance × 100 on the DreamSim ensemble v0.2 (DINO, CLIP and OpenCLIP ViT-B/16 with "
                    "DreamSim's LoRA merged, 224² bicubic): 1 − cosine of the embeddings, output vs style "
                    "reference; lower is closer (the paper's DreamSim score).",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        """``output``, ``style``: ``(B, 3, H, W)`` in [0, 1] → ``(B,)`` in [0, 200]."""
        out, ref = self.pair(output, style, "style", keys, field="embed")
        return 100.0 * dreamsim_distance(out, ref)
