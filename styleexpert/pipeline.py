"""The StyleExpert model bundle and its sampling pipeline (PAPER.md §2.1).

Token layout per denoising step, as in Flux-Kontext: ``[noisy | content | style]`` image tokens with
position ids ``(0, row, col)``, ``(1, row, col)`` and ``(2, row + 64, col)``, plus the text tokens; only the
first ``N_noisy`` outputs are the velocity. The style image also goes through the style encoder once per
image; its embedding routes every mixture layer for all tokens and timesteps.

Latent space: the VAE's latents, packed 2×2 at full size (Flux's ×8, 16-channel VAE) and 4×4 in ``tiny-v2``
(its own ×4, 8-channel autoencoder); the ``tiny`` preset has no VAE and packs 4×4 pixels (mapped to
``[-1, 1]``): the same code path, other factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import SiglipVisionConfig, SiglipVisionModel

from styleexpert import inject
from styleexpert.encoder import StyleEncoder, StyleProjector
from styleexpert.presets import get_preset

VARIANTS = ("moe", "lora", "noprior")
"""``moe``: the method; ``lora``: one rank-E·r LoRA, no router; ``noprior``: the mixture routed by an
encoder whose projector was never trained (the paper's two ablations)."""


def pack(latents: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, (H/p)(W/p), C·p²)`` tokens in row-major patch order."""
    b, c, h, w = latents.shape
    if h % p or w % p:
        raise ValueError(f"latent size {h}×{w} is not divisible by the packing factor {p}")
    x = latents.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpack(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of ``pack`` for a ``h × w`` latent."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(rows: int, cols: int, index: int, row_offset: int = 0, device=None) -> torch.Tensor:
    """Kontext-style RoPE ids ``(rows·cols, 3)``: ``(index, row + row_offset, col)``."""
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(rows, device=device).view(-1, 1) + row_offset
    ids[..., 2] = torch.arange(cols, device=device).view(1, -1)
    return ids.view(-1, 3)


def resolution_shift(seq_len: int, cfg: dict[str, Any]) -> float:
    """Flux's resolution-dependent timestep shift μ (linear in the number of image tokens)."""
    m = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_seq_len"] - cfg["base_seq_len"])
    return seq_len * m + cfg["base_shift"] - m * cfg["base_seq_len"]


class StyleExpert(nn.Module):
    """Everything the method holds: transformer (with adapters), style encoder, optional VAE, and the fixed
    instruction embedding that stands in for the text prompt.

    Build with ``build``; ``config`` is the resolved preset (it is what a checkpoint records).
    """

    def __init__(self, config: dict[str, Any], variant: str, transformer: FluxTransformer2DModel,
                 style_encoder: StyleEncoder | None, vae: AutoencoderKL | None, prompt_embeds: torch.Tensor,
                 pooled_prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.config, self.variant = config, variant
        self.transformer, self.style_encoder, self.vae = transformer, style_encoder, vae
        self.prompt_embeds = nn.Parameter(prompt_embeds, requires_grad=False)
        self.pooled_prompt_embeds = nn.Parameter(pooled_prompt_embeds, requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    # ------------------------------------------------------------------------------------- latents
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` → latents ``(B, C, h, w)`` (normalised as the transformer expects)."""
        x = images.to(self.device, self.prompt_embeds.dtype) * 2 - 1
        if self.vae is None:
            return x
        lat = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()
        cfg = self.config["latent"]
        return (lat - cfg["shift_factor"]) * cfg["scaling_factor"]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images ``(B, 3, H, W)`` in ``[0, 1]`` (clamped)."""
        if self.vae is not None:
            cfg = self.config["latent"]
            latents = self.vae.decode((latents / cfg["scaling_factor"] + cfg["shift_factor"]).to(self.vae.dtype)).sample
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def style_embedding(self, styles: torch.Tensor) -> torch.Tensor | None:
        """``(B, embedding_dim)`` router condition, or ``None`` for the router-free variant."""
        if self.variant == "lora" or self.style_encoder is None:
            return None
        return self.style_encoder(styles.to(self.device))

    def condition(self, styles: torch.Tensor) -> torch.Tensor | None:
        """Route every adapter once for this batch of style images; returns the embedding."""
        emb = self.style_embedding(styles)
        inject.set_style_condition(self.transformer, emb)
        return emb

    # ----------------------------------------------------------------------------------- transformer
    def velocity(self, noisy: torch.Tensor, context: torch.Tensor, ids: torch.Tensor, sigma: torch.Tensor,
                 guidance: float | None = None) -> torch.Tensor:
        """One transformer call. ``noisy`` ``(B, N, D)``, ``context`` ``(B, M, D)`` (content [+ style] tokens),
        ``ids`` ``(N + M, 3)``, ``sigma`` ``(B,)`` in ``[0, 1]``; returns the velocity ``(B, N, D)``."""
        b, n = noisy.shape[:2]
        dtype = self.prompt_embeds.dtype
        txt = self.prompt_embeds.unsqueeze(0).expand(b, -1, -1)
        pooled = self.pooled_prompt_embeds.unsqueeze(0).expand(b, -1)
        g = None
        if self.transformer.config.guidance_embeds:
            g = torch.full((b,), float(guidance if guidance is not None else 3.5), device=self.device, dtype=dtype)
        out = self.transformer(
            hidden_states=torch.cat([noisy, context], dim=1).to(dtype), encoder_hidden_states=txt,
            pooled_projections=pooled, timestep=sigma.to(dtype), img_ids=ids,
            txt_ids=torch.zeros(txt.shape[1], 3, device=self.device, dtype=dtype), guidance=g, return_dict=False,
        )[0]
        return out[:, :n]

    def context_tokens(self, content_latents: torch.Tensor, style_latents: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed content (and style) tokens and the ids of ``[noisy | content | style]``."""
        p = self.config["latent"]["pack"]
        h, w = content_latents.shape[-2:]
        rows, cols = h // p, w // p
        ids = [image_ids(rows, cols, 0, device=self.device), image_ids(rows, cols, 1, device=self.device)]
        tokens = [pack(content_latents, p)]
        if style_latents is not None:
            sh, sw = style_latents.shape[-2:]
            ids.append(image_ids(sh // p, sw // p, 2, self.config["style_row_offset"], device=self.device))
            tokens.append(pack(style_latents, p))
        return torch.cat(tokens, dim=1), torch.cat(ids, dim=0)

    def prepare(self, contents: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode inputs: content latents, context tokens and ids (style tokens when the preset uses them)."""
        content_lat = self.encode(contents)
        style_lat = self.encode(styles) if self.config["style_tokens"] else None
        context, ids = self.context_tokens(content_lat, style_lat)
        return content_lat, context, ids


def _backbone(cfg: dict[str, Any]) -> nn.Module:
    """A randomly initialised style backbone: SigLIP of the given sizes, or the registry backbone's class (its
    weights are loaded afterwards, ``styleexpert.io.load_registry_backbone``)."""
    if "registry" in cfg:
        if cfg["registry"] != "dinov2-s":
            raise ValueError(f"unknown registry style backbone {cfg['registry']!r} (known: dinov2-s)")
        from transformers import Dinov2Model

        from sxbench.backbones.dinov2_onnx import dinov2_small_config

        return Dinov2Model(dinov2_small_config())
    return SiglipVisionModel(SiglipVisionConfig(**cfg))


def backbone_tokens(cfg: dict[str, Any]) -> int:
    """Hidden-state tokens of the style backbone at its input size (patches, plus the class token if any)."""
    return (cfg["image_size"] // cfg["patch_size"]) ** 2 + int(bool(cfg.get("cls_token")))


def make_vae(latent: dict[str, Any]) -> AutoencoderKL:
    """The preset's autoencoder (diffusers ``AutoencoderKL``; ``latent["vae_config"]`` gives its sizes)."""
    vc = latent.get("vae_config") or {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}
    blocks = len(vc["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent["latent_channels"],
                         down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                         block_out_channels=tuple(vc["block_out_channels"]), layers_per_block=vc["layers_per_block"],
                         norm_num_groups=vc.get("norm_num_groups", 32),
                         mid_block_add_attention=vc.get("mid_block_add_attention", True),
                         scaling_factor=latent["scaling_factor"], shift_factor=latent["shift_factor"],
                         use_quant_conv=False, use_post_quant_conv=False)


def build(preset: str | dict[str, Any] = "tiny", variant: str = "moe", *, overrides: dict[str, Any] | None = None,
          released_compat: bool = False, seed: int = 0, device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32, components: dict[str, Any] | None = None) -> StyleExpert:
    """A randomly initialised StyleExpert (deterministic in ``seed``); load weights into it afterwards.

    ``device="meta"`` allocates nothing (for counting parameters and FLOPs of the full preset).
    ``components`` supplies pretrained parts instead of random ones (``transformer``, ``vae``, ``backbone``,
    ``prompt_embeds``, ``pooled_prompt_embeds``; see ``styleexpert.io.load_pretrained``): adapters and the
    projector are still created here, so a pretrained model gets exactly the same adapters as a random one.
    """
    parts = components or {}
    cfg = get_preset(preset, overrides) if isinstance(preset, str) else preset
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        if device.type != "meta":
            torch.manual_seed(seed)
        transformer = parts["transformer"] if "transformer" in parts else FluxTransformer2DModel(**cfg["transformer"])
        enc = cfg["encoder"]
        backbone = parts["backbone"] if "backbone" in parts else _backbone(enc["backbone"])
        bb = enc["backbone"]
        projector = StyleProjector(len(enc["layer_indices"]), backbone_tokens(bb), bb["hidden_size"],
                                   enc["style_tokens"], enc["hidden_size"])
        norm = {k: enc[k] for k in ("mean", "std") if k in enc}
        style_encoder = StyleEncoder(backbone, projector, enc["layer_indices"], bb["image_size"], **norm)
        vae = parts.get("vae")
        if vae is None and cfg["latent"]["vae"]:
            vae = make_vae(cfg["latent"])
        tc = cfg["transformer"]
        prompt = torch.randn(cfg["prompt"]["tokens"], tc["joint_attention_dim"]) if device.type != "meta" else \
            torch.empty(cfg["prompt"]["tokens"], tc["joint_attention_dim"])
        pooled = torch.randn(tc["pooled_projection_dim"]) if device.type != "meta" else torch.empty(tc["pooled_projection_dim"])
        prompt = parts.get("prompt_embeds", prompt)
        pooled = parts.get("pooled_prompt_embeds", pooled)
        if variant == "lora":
            inject.inject_lora(transformer, rank=cfg["lora"]["rank"])
        else:
            inject.inject_moe(transformer, cond_dim=projector.embedding_dim, released_compat=released_compat,
                              **cfg["moe"])
    model = StyleExpert(cfg, variant, transformer, style_encoder if variant != "lora" else None, vae, prompt, pooled)
    inject.freeze_base(model.transformer, train_non_block=False)
    if model.style_encoder is not None:  # stage 2 setting; stage 1 unfreezes the projector explicitly
        model.style_encoder.requires_grad_(False)
    return model.to(dtype=dtype) if device.type != "meta" else model


@dataclass(frozen=True)
class StyleExpertOutput:
    """What the pipeline returns."""

    images: torch.Tensor
    """``(B, 3, H, W)`` float32 in ``[0, 1]``."""
    routing: dict[str, Any]
    """Per mixture layer, the ``RoutingDecision`` used for the whole sampling run (empty for ``lora``)."""


class StyleExpertPipeline:
    """Sampling: Euler flow matching (diffusers ``FlowMatchEulerDiscreteScheduler``), routing once per image."""

    def __init__(self, model: StyleExpert, scheduler: FlowMatchEulerDiscreteScheduler | None = None) -> None:
        self.model = model
        self.offload: torch.device | None = None
        s = model.config["sampling"]
        self.scheduler = scheduler or FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=bool(s.get("dynamic_shift")),
            base_shift=s.get("base_shift", 0.5), max_shift=s.get("max_shift", 1.15),
            base_image_seq_len=s.get("base_seq_len", 256), max_image_seq_len=s.get("max_seq_len", 4096))

    def enable_model_cpu_offload(self, device: str | torch.device) -> None:
        """Keep the transformer, the style encoder and the VAE on the CPU, each moved to ``device`` only for its
        stage (encode, route, denoise, decode), as diffusers' model offload does: the peak holds one component
        (the transformer) instead of all three. Outputs are unchanged."""
        self.offload = torch.device(device)
        m = self.model
        for name in ("transformer", "style_encoder", "vae"):
            if getattr(m, name) is not None:
                getattr(m, name).to("cpu")
        for p in (m.prompt_embeds, m.pooled_prompt_embeds):  # small; they set where inputs go
            p.data = p.data.to(self.offload)

    def _use(self, name: str) -> None:
        """Model offload: ``name`` on the device, the other components back on the CPU (no-op without offload, or
        when the model has no such component: ``tiny`` has no VAE, ``lora`` no style encoder)."""
        if self.offload is None or getattr(self.model, name) is None:
            return
        for other in ("vae", "style_encoder", "transformer"):
            part = getattr(self.model, other)
            if part is not None and other != name:
                part.to("cpu")
        getattr(self.model, name).to(self.offload)

    @torch.no_grad()
    def __call__(self, contents: torch.Tensor, styles: torch.Tensor, *, seeds: Sequence[int],
                 num_inference_steps: int | None = None, guidance_scale: float | None = None) -> StyleExpertOutput:
        """Stylize ``contents[i]`` with ``styles[i]``.

        Args:
            contents: ``(B, 3, H, W)`` float in ``[0, 1]``; H and W divisible by the latent packing.
            styles: ``(B, 3, H', W')`` float in ``[0, 1]``.
            seeds: one seed per sample; sample ``i``'s initial noise comes from
                ``torch.Generator("cpu").manual_seed(seeds[i])``, so results do not depend on batching.
        """
        m, s = self.model, self.model.config["sampling"]
        steps = num_inference_steps or s["steps"]
        if len(seeds) != contents.shape[0] or styles.shape[0] != contents.shape[0]:
            raise ValueError("contents, styles and seeds must have the same length")
        self._use("vae")
        content_lat, context, ids = m.prepare(contents, styles)
        b, c, h, w = content_lat.shape
        p = m.config["latent"]["pack"]
        noise = torch.stack([torch.randn(c, h, w, generator=torch.Generator("cpu").manual_seed(int(sd))) for sd in seeds])
        x = pack(noise.to(m.device, m.prompt_embeds.dtype), p)
        self._use("style_encoder")
        emb = m.style_embedding(styles)
        self._use("transformer")
        inject.set_style_condition(m.transformer, emb)  # the routers live in the transformer
        try:
            sigmas = np.linspace(1.0, 1.0 / steps, steps)
            kw = {"mu": resolution_shift(x.shape[1], s)} if s.get("dynamic_shift") else {}
            self.scheduler.set_timesteps(sigmas=sigmas, device=m.device, **kw)
            for t in self.scheduler.timesteps:
                sigma = (t / self.scheduler.config.num_train_timesteps).expand(b)
                v = m.velocity(x, context, ids, sigma, guidance_scale if guidance_scale is not None else s.get("guidance"))
                x = self.scheduler.step(v, t, x, return_dict=False)[0]
            route = inject.routing(m.transformer)
        finally:
            inject.set_style_condition(m.transformer, None)
        self._use("vae")
        return StyleExpertOutput(m.decode(unpack(x, h, w, p)), route)


def flow_matching_loss(model: StyleExpert, contents: torch.Tensor, styles: torch.Tensor, targets: torch.Tensor,
                       generator: torch.Generator, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified-flow loss of Kontext: ``x_σ = (1 − σ) x₀ + σ ε``, predict ``v = ε − x₀`` (MSE).

    ``sigma`` ``(B,)`` defaults to logit-normal samples (mean 0, std 1), as in SD3/Flux training.
    """
    model.condition(styles)
    style_lat = model.encode(styles) if model.config["style_tokens"] else None
    return latent_flow_matching_loss(model, model.encode(contents), style_lat, model.encode(targets), generator, sigma)


def latent_flow_matching_loss(model: StyleExpert, content_lat: torch.Tensor, style_lat: torch.Tensor | None,
                              target_lat: torch.Tensor, generator: torch.Generator,
                              sigma: torch.Tensor | None = None) -> torch.Tensor:
    """``flow_matching_loss`` on latents (``model.encode``'s output; encode once and cache them to train fast).
    The adapters' routing must already be set for this batch (``model.condition`` or
    ``inject.set_style_condition`` with cached embeddings)."""
    context, ids = model.context_tokens(content_lat, style_lat if model.config["style_tokens"] else None)
    x0 = pack(target_lat, model.config["latent"]["pack"])
    b = x0.shape[0]
    if sigma is None:
        sigma = torch.sigmoid(torch.randn(b, generator=generator)).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    s = sigma.view(b, 1, 1).to(x0.dtype)
    xt = (1 - s) * x0 + s * eps
    v = model.velocity(xt, context, ids, sigma)
    return F.mse_loss(v.float(), (eps - x0).float())
