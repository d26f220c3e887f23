"""Putting adapters into a diffusers ``FluxTransformer2DModel`` by module-name patterns.

Default targets: every ``nn.Linear`` inside every double-stream (``transformer_blocks.*``) and
single-stream (``single_transformer_blocks.*``) block: 14 per double block, 6 per single block, 494 at full
size (PAPER.md §2.4).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

import torch
import torch.nn as nn

from styleexpert.moe import LoRALinear, MoELoRALinear, RoutingDecision

BLOCK_PATTERNS = ("transformer_blocks.*", "single_transformer_blocks.*")
"""Glob patterns (``fnmatch``, ``*`` crosses dots) of the linears that get adapters by default."""
NON_BLOCK_MODULES = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")
"""Top-level modules outside the blocks; the paper's trainable-parameter counts include them (§2.4)."""

Adapter = MoELoRALinear | LoRALinear


def target_names(model: nn.Module, patterns: Iterable[str] = BLOCK_PATTERNS) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules matching any pattern, in module order."""
    patterns = tuple(patterns)
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatchcase(n, p) for p in patterns)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject_moe(model: nn.Module, *, cond_dim: int, num_experts: int = 16, rank: int = 8, top_k: int = 2,
               alpha: float = 16.0, released_compat: bool = False, patterns: Iterable[str] = BLOCK_PATTERNS,
               names: Iterable[str] | None = None) -> dict[str, MoELoRALinear]:
    """Wrap matching linears (or exactly ``names``) in ``MoELoRALinear``; returns them by name."""
    chosen = list(names) if names is not None else target_names(model, patterns)
    out = {}
    for n in chosen:
        base = model.get_submodule(n)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{n} is a {type(base).__name__}, not an nn.Linear")
        layer = MoELoRALinear(base, cond_dim, num_experts, rank, top_k, alpha, released_compat)
        _replace(model, n, layer)
        out[n] = layer
    return out


def inject_lora(model: nn.Module, *, rank: int = 128, alpha: float | None = None,
                patterns: Iterable[str] = BLOCK_PATTERNS) -> dict[str, LoRALinear]:
    """Wrap matching linears in a single ``LoRALinear`` each (the no-router ablation)."""
    out = {}
    for n in target_names(model, patterns):
        layer = LoRALinear(model.get_submodule(n), rank, alpha)
        _replace(model, n, layer)
        out[n] = layer
    return out


def adapters(model: nn.Module) -> dict[str, Adapter]:
    """Every adapter in ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (MoELoRALinear, LoRALinear))}


def set_style_condition(model: nn.Module, cond: torch.Tensor | None) -> None:
    """Route every mixture layer once from the style embeddings ``cond`` ``(B, cond_dim)``; ``None`` clears."""
    for m in adapters(model).values():
        m.set_condition(cond)


def routing(model: nn.Module) -> dict[str, RoutingDecision]:
    """Last routing of each mixture layer (layers never conditioned are omitted)."""
    return {n: m.routing for n, m in adapters(model).items() if isinstance(m, MoELoRALinear) and m.routing is not None}


def merge(model: nn.Module) -> None:
    """Fold the active experts of the current (single) style into the base weights."""
    for m in adapters(model).values():
        if isinstance(m, MoELoRALinear):
            m.merge()


def unmerge(model: nn.Module) -> None:
    for m in adapters(model).values():
        if isinstance(m, MoELoRALinear):
            m.unmerge()


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable adapter parameters (experts, shared expert, routers or the single LoRA)."""
    return [p for m in adapters(model).values() for n, p in m.named_parameters() if not n.startswith("base.")]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors keyed ``<module path>.lora_layer.<loraA|loraB|shared_A|shared_B|cond_gate.weight>`` (the
    released format) or ``<module path>.<lora_A|lora_B>`` for the single LoRA."""
    out = {}
    for name, m in adapters(model).items():
        for pname, p in m.named_parameters():
            if not pname.startswith("base."):
                out[f"{name}.{pname}"] = p.detach()
    return out


def freeze_base(model: nn.Module, train_non_block: bool = False) -> None:
    """Freeze everything but the adapters (and, with ``train_non_block``, the modules outside the blocks)."""
    model.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
    if train_non_block:
        for n in NON_BLOCK_MODULES:
            if hasattr(model, n):
                getattr(model, n).requires_grad_(True)
