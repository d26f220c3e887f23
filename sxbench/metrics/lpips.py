"""Standard LPIPS to the content (Zhang et al., CVPR 2018): v0.1 linear heads on torchvision's ImageNet AlexNet
and VGG-16 trunks (backbones ``lpips-alex`` and ``lpips-vgg``; see ``sxbench.backbones.lpips_net``)."""

from __future__ import annotations

from sxbench.metrics.backbone import ContentDistance
from sxbench.metrics.image import INF
from sxbench.records import MetricInfo


class LPIPSContent(ContentDistance):
    backbone_name = "lpips-alex"
    info = MetricInfo(
        "lpips_content", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="lpips-alex",
        description="LPIPS on LPIPS v0.1 AlexNet (torchvision's ImageNet trunk + the lpips package's v0.1 heads) "
                    "between output and content at the protocol resolution: inputs [0, 1] → [-1, 1], the lpips "
                    "package's model exactly.",
    )


class LPIPSContentVGG(LPIPSContent):
    backbone_name = "lpips-vgg"
    info = MetricInfo(
        "lpips_content_vgg", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="lpips-vgg",
        description="LPIPS on LPIPS v0.1 VGG-16 (torchvision's ImageNet trunk + the lpips package's v0.1 heads) "
                    "between output and content at the protocol resolution: inputs [0, 1] → [-1, 1], the lpips "
                    "package's model exactly.",
    )
