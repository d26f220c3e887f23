"""Parameter and FLOP accounting on the meta device (nothing downloaded, nothing allocated).

Trainable parameters follow the paper's counting (PAPER.md §2.4, §6.3): adapters (experts, shared expert and
routers, or the single LoRA) plus, where the preset says ``train_non_block``, the modules outside the blocks.
FLOPs are analytic, per *image token*, for the linears an image token passes through (image stream of the
double blocks, all of the single blocks); adaptive-norm modulation and routers run once per image and are
left out. One multiply-add counts as two FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


from styleexpert import inject
from styleexpert.moe import MoELoRALinear
from styleexpert.pipeline import build
from styleexpert.presets import get_preset

_PER_IMAGE = ("norm.linear", "norm1.linear", "norm1_context.linear")
_TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context.")


@dataclass(frozen=True)
class ModelStats:
    """Counts for one preset."""

    preset: str
    wrapped_linears: int
    moe_trainable: int
    """Experts + shared experts + routers (+ non-block modules when the preset trains them)."""
    lora_trainable: int
    """Single rank-E·r LoRA (+ the same non-block modules)."""
    non_block: int
    router: int
    lora_rank: int
    base_flops_per_token: float
    lora_flops_per_token: float
    moe_flops_per_token: float
    seconds: float


def _is_image_token_linear(name: str) -> bool:
    return not name.endswith(_PER_IMAGE) and not any(t in name for t in _TEXT_STREAM)


def summarize(preset: str = "full") -> ModelStats:
    t0 = time.perf_counter()
    cfg = get_preset(preset)
    moe = build(cfg, "moe", device="meta")
    lora = build(cfg, "lora", device="meta")
    non_block = sum(p.numel() for n in inject.NON_BLOCK_MODULES if hasattr(moe.transformer, n)
                    for p in getattr(moe.transformer, n).parameters()) if cfg["train_non_block"] else 0
    moe_layers = inject.adapters(moe.transformer)
    router = sum(m.lora_layer.cond_gate.weight.numel() for m in moe_layers.values() if isinstance(m, MoELoRALinear))
    moe_params = sum(p.numel() for p in inject.adapter_parameters(moe.transformer)) + non_block
    lora_params = sum(p.numel() for p in inject.adapter_parameters(lora.transformer)) + non_block
    base = lora_f = moe_f = 0.0
    k, r = cfg["moe"]["top_k"], cfg["moe"]["rank"]
    for name, m in moe_layers.items():
        if not _is_image_token_linear(name):
            continue
        i, o = m.in_features, m.out_features
        base += 2 * i * o
        moe_f += 2 * (k + 1) * r * (i + o)
        lora_f += 2 * cfg["lora"]["rank"] * (i + o)
    return ModelStats(preset, len(moe_layers), moe_params, lora_params, non_block, router, cfg["lora"]["rank"],
                      base, lora_f, moe_f, time.perf_counter() - t0)


def format_stats(s: ModelStats) -> list[str]:
    """Human-readable lines (what ``sxbench inspect styleexpert`` prints)."""
    g = 1e9
    return [
        f"preset: {s.preset} (built on the meta device in {s.seconds:.1f} s)",
        f"wrapped linears: {s.wrapped_linears}",
        f"trainable parameters, MoE-LoRA: {s.moe_trainable / 1e6:.2f} M = {s.moe_trainable:,} "
        f"(routers {s.router / 1e6:.2f} M, non-block modules {s.non_block / 1e6:.3f} M)",
        f"trainable parameters, single rank-{s.lora_rank} LoRA: {s.lora_trainable / 1e6:.2f} M = {s.lora_trainable:,}",
        f"FLOPs per image token (linears): base {s.base_flops_per_token / g:.3f} G, "
        f"+LoRA {s.lora_flops_per_token / g:.4f} G ({100 * s.lora_flops_per_token / s.base_flops_per_token:.2f}%), "
        f"+MoE active experts {s.moe_flops_per_token / g:.4f} G ({100 * s.moe_flops_per_token / s.base_flops_per_token:.2f}%)",
    ]


__all__ = ["ModelStats", "format_stats", "summarize"]
