"""DreamSim (Fu et al., NeurIPS 2023), the ensemble perceptual distance, as three plain-torch ViTs.

The reference is ``ssundaram21/dreamsim`` v0.2 (``dreamsim(dreamsim_type="ensemble")``): three ViT-B/16 towers in
DINO's module layout (``feature_extraction/vision_transformer.py``), each fine-tuned with a PEFT LoRA (r 16,
alpha 0.5, on every ``attn.qkv``), features concatenated, centred, L2-normalised; distance = 1 − cosine.

======================  ===============  =========  ==========  ====================================================
tower                   normalisation    LN eps     MLP act     feature (dim for ViT-B)
======================  ===============  =========  ==========  ====================================================
``dino`` (DINO)         ImageNet         1e-6       GELU        CLS token after the last block, *before* the final
                                                                LayerNorm (DreamSim hooks block 11) — 768
``clip`` (OpenAI CLIP)  OpenAI CLIP      1e-5       QuickGELU   ``norm(x)[:, 0] @ proj`` (ln_post, projection) — 512
``open_clip``           OpenAI CLIP      1e-5       GELU        ``norm(x)[:, 0] @ proj`` — 512
======================  ===============  =========  ==========  ====================================================

The CLIP towers have CLIP's ``ln_pre`` after the position embedding (DreamSim puts a LayerNorm in DINO's
``pos_drop`` slot; stored here as ``norm_pre``). Images are resized to 224² (bicubic) in [0, 1], then normalised per
tower. The embedding is ``e − mean(e)`` divided by its norm (v0.2's ``normalize_embedding``), 1792-d.

Stored form (``model.safetensors``, written by ``convert_release``): keys ``{tower}.{DINO-layout key}`` with the LoRA
already merged into the weights (``W + alpha/r · B A``), ``clip.proj`` and ``open_clip.proj`` ``(width, 512)``, and
metadata ``config`` (JSON: heads per tower) plus provenance. ``convert_release`` reads the official files:

- ``dreamsim_ensemble_checkpoint.zip`` (GitHub release ``v0.2.0-checkpoints``): ``clip_vitb16_pretrain.pth.tar`` and
  ``open_clip_vitb16_pretrain.pth.tar`` (``{"state_dict": ...}`` in DINO layout, ``pos_drop.*`` = ln_pre, ``proj``),
  ``ensemble_lora/adapter_config.json`` and ``ensemble_lora/adapter_model.safetensors`` (or ``.bin``): the LoRA of
  the whole ``PerceptualModel``, keys ``base_model.model.extractor_list.{0,1,2}.model.<module>.lora_{A,B}.weight``
  (0 dino, 1 clip, 2 open_clip). The zip's ``dino_vitb16_pretrain.pth`` (DINO's training checkpoint, of which
  DreamSim reads only the projection head, unused by the ensemble) is not read.
- ``dino_vitbase16_pretrain.pth`` (dl.fbaipublicfiles.com): the DINO backbone DreamSim takes from
  ``torch.hub.load("facebookresearch/dino:main", "dino_vitb16")`` — not in the zip.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.models import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor
from sxbench.records import file_sha256 as sha256

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 64
"""Attention head width of all three ViT-B/16 towers (the checkpoints do not record the head count)."""
RELEASE_ZIP = "dreamsim_ensemble_checkpoint.zip"
DINO_FILE = "dino_vitbase16_pretrain.pth"
FORMAT = "sxbench-dreamsim-ensemble-1"


@dataclass(frozen=True)
class Tower:
    """How one DreamSim tower is built and read (fixed by the architecture, not stored in the weights)."""

    name: str
    """Key prefix in the stored file."""
    source: str
    """The file of the release holding its base weights (``{"state_dict": ...}``), or ``DINO_FILE``."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eps: float
    """LayerNorm epsilon."""
    quick_gelu: bool
    """MLP activation: ``x·σ(1.702x)`` (OpenAI CLIP) rather than exact GELU."""
    projected: bool
    """Feature = ``norm(x)[:, 0] @ proj``; otherwise the CLS token after the last block, before ``norm``."""


TOWERS = (  # the order of DreamSim's ``extractor_list`` and of the concatenated embedding
    Tower("dino", DINO_FILE, IMAGENET_MEAN, IMAGENET_STD, 1e-6, False, False),
    Tower("clip", "clip_vitb16_pretrain.pth.tar", OPENAI_MEAN, OPENAI_STD, 1e-5, True, True),
    Tower("open_clip", "open_clip_vitb16_pretrain.pth.tar", OPENAI_MEAN, OPENAI_STD, 1e-5, False, True),
)


# -------------------------------------------------------------------------------------------- the ViT
class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if quick_gelu else nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float, quick_gelu: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, hidden, quick_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A ViT in DINO's layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), with CLIP's ``norm_pre`` and ``proj`` where asked.

    ``forward(x)``: ``x`` ``(B, 3, grid·patch, grid·patch)``, normalised → ``(B, proj_dim)`` with a projection
    (``norm(tokens)[:, 0] @ proj``), else ``(B, width)`` (CLS token after the last block, before ``norm``).
    """

    def __init__(self, *, width: int, depth: int, heads: int, patch: int, grid: int, mlp_hidden: int, eps: float,
                 quick_gelu: bool = False, pre_norm: bool = False, proj_dim: int = 0) -> None:
        super().__init__()
        self.patch, self.grid = patch, grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, width))
        self.norm_pre = nn.LayerNorm(width, eps=eps) if pre_norm else None
        self.blocks = nn.ModuleList(Block(width, heads, mlp_hidden, eps, quick_gelu) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.zeros(width, proj_dim)) if proj_dim else None

    @property
    def resolution(self) -> int:
        return self.patch * self.grid

    @classmethod
    def for_state(cls, state: dict[str, torch.Tensor], heads: int, tower: Tower) -> "ViT":
        """A ViT shaped like the DINO-layout tensors in ``state`` (no prefix)."""
        width, _, patch, _ = state["patch_embed.proj.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        return cls(width=width, depth=depth, heads=heads, patch=patch, grid=grid,
                   mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0], eps=tower.eps, quick_gelu=tower.quick_gelu,
                   pre_norm="norm_pre.weight" in state, proj_dim=state["proj"].shape[1] if "proj" in state else 0)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        return self.norm(x)[:, 0] @ self.proj if self.proj is not None else x[:, 0]


# ------------------------------------------------------------------------------------ the extractor
def centre_and_normalise(embed: torch.Tensor) -> torch.Tensor:
    """DreamSim v0.2's ``normalize_embedding``: ``(B, D)`` minus its per-row mean, divided by its norm."""
    embed = embed - embed.mean(dim=-1, keepdim=True)
    return embed / embed.norm(dim=-1, keepdim=True)


def dreamsim_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cosine of two ``(B, D)`` embeddings from ``DreamSim`` (unit norm) → ``(B,)`` in [0, 2]."""
    return (1.0 - (a * b).sum(-1)).clamp(0.0, 2.0)


class DreamSim(FeatureExtractor):
    """The DreamSim ensemble: ``forward(images)`` with images ``(B, 3, H, W)`` in [0, 1] → ``{"embed": (B, D)}``,
    the centred, unit-norm concatenation of the towers' features (D = 1792 for the release)."""

    backbone = "dreamsim-ensemble"

    def __init__(self, towers: dict[str, ViT]) -> None:
        super().__init__()
        if set(towers) != {t.name for t in TOWERS}:
            raise ValueError(f"DreamSim needs the towers {[t.name for t in TOWERS]}, got {sorted(towers)}")
        sizes = {v.resolution for v in towers.values()}
        if len(sizes) != 1:
            raise ValueError(f"DreamSim towers disagree on the input size: {sizes}")
        self.resolution = sizes.pop()
        self.towers = nn.ModuleDict({t.name: towers[t.name] for t in TOWERS})
        for t in TOWERS:
            self.register_buffer(f"{t.name}_mean", torch.tensor(t.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"{t.name}_std", torch.tensor(t.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], config: dict | None = None) -> "DreamSim":
        """From the stored tensors (``{tower}.{key}``, LoRA merged) and ``config`` (``{tower: {"heads": n}}``)."""
        towers = {}
        for t in TOWERS:
            sd = {k[len(t.name) + 1:]: v for k, v in state.items() if k.startswith(t.name + ".")}
            if "patch_embed.proj.weight" not in sd:
                raise ValueError(f"DreamSim weights have no {t.name!r} tower (keys {t.name}.*)")
            heads = (config or {}).get(t.name, {}).get("heads") or sd["patch_embed.proj.weight"].shape[0] // HEAD_DIM
            vit = ViT.for_state(sd, heads, t)
            vit.load_state_dict(sd, strict=True)
            towers[t.name] = vit
        return cls(towers)

    @classmethod
    def from_file(cls, path: Path) -> "DreamSim":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a converted DreamSim ensemble (metadata format {meta.get('format')!r}); "
                             f"run `sxbench weights fetch dreamsim-ensemble --force`")
        return cls.from_state(load_file(str(path)), json.loads(meta.get("config", "{}")))

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each tower's raw feature ``(B, d)`` (before concatenation and normalisation)."""
        x = self.resize(images.clamp(0, 1), "bicubic").clamp(0, 1)  # PIL's bicubic resize clips to [0, 255]
        return {t.name: self.towers[t.name]((x - getattr(self, f"{t.name}_mean")) / getattr(self, f"{t.name}_std"))
                for t in TOWERS}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {"embed": centre_and_normalise(torch.cat([feats[t.name].float() for t in TOWERS], dim=-1))}


# ------------------------------------------------------------------------------------- the converter
_LORA_KEY = re.compile(r"extractor_list\.(\d+)\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def lora_scaling(config: dict) -> float:
    """PEFT's LoRA scale ``alpha / r`` (``alpha / √r`` with rsLoRA) from an ``adapter_config.json``; refuses what a
    plain merge cannot reproduce (DoRA, per-module ranks, trained biases)."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"adapter is {config.get('peft_type')!r}, not LoRA")
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("adapter uses DoRA or per-module rank/alpha patterns; DreamSim's release does not")
    if config.get("bias", "none") != "none":
        raise ValueError(f"adapter trains biases (bias={config.get('bias')!r}); DreamSim's release does not")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def merge_lora(towers: dict[str, dict[str, torch.Tensor]], adapter: dict[str, torch.Tensor],
               scaling: float) -> int:
    """Add ``scaling · B A`` to each adapted ``<module>.weight`` of ``towers`` (in place); returns how many.

    ``adapter``: PEFT keys ``...extractor_list.{i}.model.<module>.lora_{A,B}.weight`` (i indexes ``TOWERS``)."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in adapter.items():
        m = _LORA_KEY.search(key)
        if m is None:
            raise ValueError(f"unexpected adapter tensor {key!r} (expected extractor_list.<i>.model.<module>.lora_A/B)")
        pairs.setdefault((int(m[1]), m[2]), {})[m[3]] = value
    for (i, module), ab in sorted(pairs.items()):
        if i >= len(TOWERS) or set(ab) != {"A", "B"}:
            raise ValueError(f"adapter for extractor_list.{i}.model.{module}: tower unknown or lora_A/lora_B missing")
        sd, key = towers[TOWERS[i].name], f"{module}.weight"
        if key not in sd:
            raise ValueError(f"adapter targets {TOWERS[i].name}.{key}, which the base weights lack")
        delta = scaling * (ab["B"].double() @ ab["A"].double())
        if delta.shape != sd[key].shape:
            raise ValueError(f"adapter for {TOWERS[i].name}.{key} has shape {tuple(delta.shape)}, "
                             f"weight {tuple(sd[key].shape)}")
        sd[key] = (sd[key].double() + delta).to(sd[key].dtype)
    return len(pairs)


def _member(zf: zipfile.ZipFile, name: str) -> str:
    """The archive member named ``name`` (at the top or under one folder)."""
    hits = [m for m in zf.namelist() if (m == name or m.endswith("/" + name)) and not m.startswith("__MACOSX")]
    if not hits:
        raise FileNotFoundError(f"{zf.filename} has no {name}")
    return min(hits, key=len)


def convert_release(zip_path: Path, dino_path: Path, dst: Path) -> None:
    """Release zip + DINO backbone → one safetensors file with the LoRA merged (see the module docstring)."""
    from safetensors.torch import load_file, save_file

    if not Path(dino_path).is_file():
        raise FileNotFoundError(f"{dino_path} is missing: DreamSim's DINO tower needs {DINO_FILE} (DINO ViT-B/16 "
                                f"backbone, https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/{DINO_FILE})")
    towers: dict[str, dict[str, torch.Tensor]] = {}
    dino = torch.load(dino_path, map_location="cpu", weights_only=True)
    towers["dino"] = {k: v.float() for k, v in dino.items() if not k.startswith("head.")}
    with zipfile.ZipFile(zip_path) as zf, tempfile.TemporaryDirectory(prefix="sxbench-dreamsim-") as tmp:
        for t in TOWERS[1:]:
            ckpt = torch.load(zf.extract(_member(zf, t.source), tmp), map_location="cpu", weights_only=True)
            sd = {k: v.float() for k, v in ckpt.get("state_dict", ckpt).items()}
            towers[t.name] = {("norm_pre." + k[len("pos_drop."):] if k.startswith("pos_drop.") else k): v
                              for k, v in sd.items()}
        adapter_config = json.loads(zf.read(_member(zf, "ensemble_lora/adapter_config.json")))
        try:
            adapter = load_file(zf.extract(_member(zf, "ensemble_lora/adapter_model.safetensors"), tmp))
        except FileNotFoundError:  # older PEFT wrote a pickle
            adapter = torch.load(zf.extract(_member(zf, "ensemble_lora/adapter_model.bin"), tmp), map_location="cpu",
                                 weights_only=True)
    scaling = lora_scaling(adapter_config)
    merged = merge_lora(towers, adapter, scaling)
    config = {}
    for t in TOWERS:
        sd = towers[t.name]
        if t.projected and "proj" not in sd:
            raise ValueError(f"{t.source}: no 'proj' (the CLIP projection DreamSim's embedding uses)")
        sd.setdefault("patch_embed.proj.bias", torch.zeros(sd["patch_embed.proj.weight"].shape[0]))
        config[t.name] = {"heads": sd["patch_embed.proj.weight"].shape[0] // HEAD_DIM}
    depth = sum(len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) for sd in towers.values())
    if merged != depth:
        raise ValueError(f"the adapter adapts {merged} modules, expected one qkv per block ({depth})")
    out = {f"{name}.{k}": v.contiguous() for name, sd in towers.items() for k, v in sd.items()}
    DreamSim.from_state(out, config)  # refuse to store what the loader would not read
    save_file(out, str(dst), metadata={
        "format": FORMAT, "config": json.dumps(config), "lora_scaling": repr(scaling),
        "lora_r": str(adapter_config["r"]), "lora_alpha": str(adapter_config["lora_alpha"]),
        "source_zip": Path(zip_path).name, "source_zip_sha256": sha256(Path(zip_path)),
        "source_dino": Path(dino_path).name, "source_dino_sha256": sha256(Path(dino_path))})
