"""Named configurations: ``tiny`` and ``tiny-v2`` (trainable on a CPU) and ``full`` (Flux.1-Kontext-dev +
SigLIP so400m).

``tiny`` works on 4×4 pixel patches with a small random backbone (fast; the tests build it); ``tiny-v2`` has
Flux's latent layout (its own small autoencoder, then packing) and the registry DINOv2-S as style backbone: the committed
models.

All build the same classes; only the numbers differ. A preset is plain data (``dict``), so a checkpoint's
``config.json`` records it whole and overrides are dictionary updates.
"""

from __future__ import annotations

import copy
from typing import Any

FULL: dict[str, Any] = {
    "name": "full",
    # diffusers FluxTransformer2DModel config of black-forest-labs/FLUX.1-Kontext-dev
    "transformer": {
        "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
    },
    # latent space: the Flux VAE (16 channels, ×8) then 2×2 packing
    "latent": {"vae": True, "latent_channels": 16, "vae_scale": 8, "pack": 2,
               "scaling_factor": 0.3611, "shift_factor": 0.1159,
               # diffusers AutoencoderKL arguments of the Flux VAE (besides the channels and factors above)
               "vae_config": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
                              "norm_num_groups": 32, "mid_block_add_attention": True}},
    # style encoder: SigLIP so400m-patch14-384 hidden states -2, -11, -20 → 3 × 8 × 128 = 3072
    "encoder": {
        "backbone": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        "layer_indices": [-2, -11, -20], "style_tokens": 8, "hidden_size": 128,
    },
    "moe": {"num_experts": 16, "rank": 8, "top_k": 2, "alpha": 16.0},
    "lora": {"rank": 128},
    "prompt": {"tokens": 128},
    "sampling": {"resolution": 1024, "steps": 28, "guidance": 3.5, "dynamic_shift": True,
                 "base_shift": 0.5, "max_shift": 1.15, "base_seq_len": 256, "max_seq_len": 4096},
    "style_tokens": True,
    "style_row_offset": 64,
    "train_non_block": True,
}

TINY: dict[str, Any] = {
    "name": "tiny",
    # the transformer works on 4×4 patches of pixels: 64 × 64 images → 256 tokens of 48 channels
    "transformer": {
        "patch_size": 1, "in_channels": 48, "out_channels": None, "num_layers": 2, "num_single_layers": 2,
        # 2 heads of 32: RoPE needs enough dimensions per spatial axis (12) to tell 16 positions apart,
        # or the noisy tokens cannot find their content token (measured: 4 heads of 16 never learn to copy)
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 64,
        "pooled_projection_dim": 64, "guidance_embeds": False, "axes_dims_rope": [8, 12, 12],
    },
    "latent": {"vae": False, "latent_channels": 3, "vae_scale": 1, "pack": 4, "scaling_factor": 1.0, "shift_factor": 0.0},
    "encoder": {
        "backbone": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "image_size": 64, "patch_size": 8},
        "layer_indices": [-1, -2, -4], "style_tokens": 8, "hidden_size": 16,
    },
    "moe": {"num_experts": 16, "rank": 4, "top_k": 2, "alpha": 8.0},
    "lora": {"rank": 64},
    "prompt": {"tokens": 4},
    "sampling": {"resolution": 64, "steps": 8, "guidance": None, "dynamic_shift": False},
    "style_tokens": True,
    "style_row_offset": 64,
    "train_non_block": False,
}

TINY_V2: dict[str, Any] = {
    "name": "tiny-v2",
    # Flux's layout (an autoencoder, then packing) at small size: a small AutoencoderKL trained here (8 channels,
    # ×4 down), 4×4 packing, so 128² images (the synth protocol's resolution) → 32² latents → 64 tokens of 128
    # channels per image. ×8 down with 16 channels (Flux's) reconstructs the synth targets at SSIM 0.27-0.30 after
    # 300 steps, no better than reinhard's outputs score against them; ×4 with 8 channels reaches 0.38-0.48
    # (benchmarks/styleexpert_tiny.md)
    "transformer": {
        "patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 4, "num_single_layers": 4,
        "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": 64,
        "pooled_projection_dim": 64, "guidance_embeds": False, "axes_dims_rope": [8, 12, 12],
    },
    "latent": {"vae": True, "latent_channels": 8, "vae_scale": 4, "pack": 4,
               # set from the trained autoencoder's latents (train.stage_vae): latents have mean 0 and std 1
               "scaling_factor": 1.0, "shift_factor": 0.0,
               "vae_config": {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
                              "mid_block_add_attention": False}},
    # the registry's DINOv2-S (sxbench weights ``dinov2-s``), frozen, at 112² (8 × 8 patches + CLS), three of its
    # twelve layers, as the paper uses three of SigLIP's; its weights are loaded from the weights folder, never
    # stored in our checkpoints
    "encoder": {
        "backbone": {"registry": "dinov2-s", "hidden_size": 384, "image_size": 112, "patch_size": 14, "cls_token": True},
        "layer_indices": [-2, -6, -10], "style_tokens": 8, "hidden_size": 16,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    "moe": {"num_experts": 16, "rank": 4, "top_k": 2, "alpha": 8.0},
    "lora": {"rank": 64},
    "prompt": {"tokens": 4},
    # 4 Euler steps: on synth (seed 0, 224 pairs) target_ssim is higher than with 8 at every level (+0.008
    # [+0.005, +0.011] texture, n=56) and style_gram no different (benchmarks/styleexpert_tiny.md); half the time
    "sampling": {"resolution": 128, "steps": 4, "guidance": None, "dynamic_shift": False},
    "style_tokens": True,
    "style_row_offset": 64,
    "train_non_block": False,
}

PRESETS = {"full": FULL, "tiny": TINY, "tiny-v2": TINY_V2}


def get_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of preset ``name`` with ``overrides`` merged in (nested dicts merge key by key)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name])
    _merge(cfg, overrides or {})
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
