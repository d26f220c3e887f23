"""CFSD, the Content Feature Structural Distance of StyleID (Chung, Hyun and Heo, "Style Injection in Diffusion:
A Training-free Approach for Adapting Large-scale Diffusion Models for Style Transfer", CVPR 2024).

As in the authors' evaluation code (github.com/jiwoogit/StyleID, ``evaluation/image_metrics.py:PatchSimi``):
take VGG-19 ``relu3_1`` features ``F`` ``(C, N)`` of an image (one column per spatial position), divide them
by ``C``, form the patch self-similarity ``S = Fᵀ F`` ``(N, N)`` and softmax each row. CFSD is the KL
divergence of the content's rows from the output's rows, summed over the N rows (``F.kl_div(log Q_out, P_cnt,
reduction="batchmean")`` per image): 0 when the output's feature structure equals the content's.

Substitutions, stated in the metric's description: the reference runs torchvision's ImageNet VGG-19 on
512² images (ImageNet normalisation); we use the registry's VGG-19 (Caffe weights, 8-bit k-means, Caffe
preprocessing) on the shared 128² features. Caffe activations are on a much larger scale than torchvision's
(``relu3_1`` RMS ≈ 200–450 on photographs), which would make every softmax row one-hot; they are divided by
``FEATURE_SCALE`` (Caffe's input scale over ImageNet normalisation, 255 · 0.226), which puts the rows back in
the reference's nearly flat regime. Values order outputs the same way in spirit but are not numerically
comparable with published CFSD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sxbench.backbones.models import STRUCTURE_LAYER
from sxbench.metrics.backbone import BackboneMetric
from sxbench.metrics.image import INF
from sxbench.records import MetricInfo

FEATURE_SCALE = 255.0 * 0.226
"""Caffe VGG inputs are ×255 and mean-subtracted; torchvision's are divided by ImageNet std (mean 0.226)."""


def patch_log_similarity(feats: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax of the patch self-similarity of ``feats`` ``(B, C, H, W)``: ``(B, N, N)``, N = H·W,
    float64 (the rows are nearly flat: their log-probabilities differ from each other's by little)."""
    c = feats.shape[1]
    x = feats.double().flatten(2).transpose(1, 2) / c
    return F.log_softmax(x @ x.transpose(1, 2), dim=-1)


def cfsd(output_feats: torch.Tensor, content_feats: torch.Tensor) -> torch.Tensor:
    """CFSD per image ``(B,)`` from ``relu3_1`` features of outputs and contents, both ``(B, C, H, W)``:
    ``Σ_i KL(P_content,i ‖ P_output,i)`` over the N patch rows."""
    log_q = patch_log_similarity(output_feats)
    log_p = patch_log_similarity(content_feats)
    kl = (log_p.exp() * (log_p - log_q)).flatten(1).sum(1)
    return kl.clamp_min(0.0).float()


class CFSD(BackboneMetric):
    backbone_name = "vgg19"
    roles, fields = ("output", "content"), (STRUCTURE_LAYER,)
    info = MetricInfo(
        "cfsd", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="vgg19",
        description="CFSD (StyleID, CVPR 2024) on VGG-19 (registry: Keras/Caffe ImageNet weights, 8-bit k-means "
                    "quantised): KL divergence between the softmaxed patch self-similarities of relu3_1 features "
                    "of content and output, summed over patches. The reference uses torchvision's VGG-19 at 512²; "
                    "here 128², activations ÷ 57.6 to match the reference's softmax regime: not comparable with "
                    "published values.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys, field=STRUCTURE_LAYER)
        return cfsd(out / FEATURE_SCALE, ref / FEATURE_SCALE)
