"""Mixture-of-LoRA-experts around a frozen linear layer, routed once per image by a style embedding.

PAPER.md §2.4. For input ``h`` of sample ``b`` the layer computes

    h' = W h + bias + (α / r) · ( B_s A_s h + Σ_i w_{b,i} B_i A_i h )

with ``E`` routed experts ``(A_i, B_i)`` of rank ``r``, an always-on shared expert ``(A_s, B_s)``, and
``w_b = softmax(TopK(router(e_b), k))``: the ``k`` largest router logits, softmaxed, the others 0. The routing
depends only on the sample's style embedding ``e_b``, so it is the same for every token and every timestep.

Only the active experts are computed: the shared and the ``k`` selected ``(A, B)`` pairs of each sample are
gathered into one rank-``(k+1)·r`` pair and applied with two batched matmuls.

``released_compat=True`` reproduces the weighting of the authors' released ``param_CondLoRAMoELayer``: it
stacks ``[shared, e_1, …, e_k]`` but pads the score vector at the end, ``[w_1, …, w_k, 0]``, so the shared
expert is scaled by the top-1 weight, expert ``e_i`` by ``w_{i+1}`` and the last selected expert by 0, and the
scale is the integer ``16 // r``.

Parameter names (``lora_layer.loraA`` …) follow the released checkpoints, so their state dicts load as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class RoutingDecision:
    """The experts one layer chose for each sample of the last conditioned batch."""

    indices: torch.Tensor
    """``(B, k)`` int64 expert indices, by descending router logit."""
    weights: torch.Tensor
    """``(B, k)`` softmax weights of those experts (sum to 1 per sample), float32 or wider."""


class MoELoRAExperts(nn.Module):
    """The trainable part: routed experts, the shared expert and the router (names as released).

    Shapes: ``loraA (E, r, in)``, ``loraB (E, out, r)``, ``shared_A (1, r, in)``, ``shared_B (1, out, r)``,
    ``cond_gate: Linear(cond_dim → E, bias=False)``.
    """

    def __init__(self, in_features: int, out_features: int, cond_dim: int, num_experts: int = 16, rank: int = 8,
                 top_k: int = 2, alpha: float = 16.0, device=None, dtype=None) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        kw = {"device": device, "dtype": dtype}
        self.num_experts, self.rank, self.top_k, self.alpha = num_experts, rank, top_k, alpha
        self.loraA = nn.Parameter(torch.empty(num_experts, rank, in_features, **kw))
        self.loraB = nn.Parameter(torch.empty(num_experts, out_features, rank, **kw))
        self.shared_A = nn.Parameter(torch.empty(1, rank, in_features, **kw))
        self.shared_B = nn.Parameter(torch.empty(1, out_features, rank, **kw))
        self.cond_gate = nn.Linear(cond_dim, num_experts, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ~ N(0, 1/r) (std), B = 0, so a fresh adapter leaves the base model unchanged."""
        if self.loraA.device.type == "meta":
            return
        nn.init.normal_(self.loraA, std=1.0 / self.rank)
        nn.init.normal_(self.shared_A, std=1.0 / self.rank)
        nn.init.zeros_(self.loraB)
        nn.init.zeros_(self.shared_B)
        nn.init.kaiming_uniform_(self.cond_gate.weight, a=5**0.5)

    def route(self, cond: torch.Tensor) -> RoutingDecision:
        """Top-k routing of ``cond`` ``(B, cond_dim)``."""
        logits = self.cond_gate(cond.to(self.cond_gate.weight.dtype))
        top, idx = torch.topk(logits, self.top_k, dim=-1, sorted=True)
        return RoutingDecision(idx, torch.softmax(top.to(torch.promote_types(top.dtype, torch.float32)), dim=-1))


class _FrozenLinearWrapper(nn.Module):
    """Holds a frozen ``nn.Linear`` as ``base`` and looks like it (for code that inspects the layer it called)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class MoELoRALinear(_FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus a style-routed mixture of LoRA experts.

    Call ``set_condition(style_embedding)`` once per batch of images (``(B, cond_dim)``) before the forward
    passes; inputs are ``(B, in)`` or ``(B, T, in)`` (any number of middle dimensions) with the same ``B``.
    """

    def __init__(self, base: nn.Linear, cond_dim: int, num_experts: int = 16, rank: int = 8, top_k: int = 2,
                 alpha: float = 16.0, released_compat: bool = False) -> None:
        super().__init__(base)
        self.lora_layer = MoELoRAExperts(base.in_features, base.out_features, cond_dim, num_experts, rank, top_k,
                                         alpha, device=base.weight.device, dtype=base.weight.dtype)
        self.released_compat = released_compat
        self.routing: RoutingDecision | None = None
        self._slot_weights: torch.Tensor | None = None  # (B, (k+1)·r) per-rank-slot scale
        self._A: torch.Tensor | None = None  # gathered (B, (k+1)·r, in)
        self._B: torch.Tensor | None = None  # gathered (B, out, (k+1)·r)
        self._merged: torch.Tensor | None = None  # original weight while merged

    @property
    def scale(self) -> float:
        """α / r (the paper); ``16 // r`` in compat mode (the released code's integer division)."""
        m = self.lora_layer
        return float(16 // m.rank) if self.released_compat else m.alpha / m.rank

    def expert_weights(self, routing: RoutingDecision) -> torch.Tensor:
        """``(B, k + 1)`` weights of ``[shared, e_1 … e_k]`` before the scale."""
        w = routing.weights
        if self.released_compat:
            return torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
        return torch.cat([torch.ones_like(w[:, :1]), w], dim=1)

    def set_condition(self, cond: torch.Tensor | None) -> None:
        """Route each image once from its style embedding ``cond`` ``(B, cond_dim)``; ``None`` clears it."""
        if cond is None:
            self.routing = self._slot_weights = self._A = self._B = None
            return
        if self._merged is not None:
            raise RuntimeError("unmerge() before setting a new condition on a merged layer")
        self.routing = self.lora_layer.route(cond)
        self._A = self._B = None
        r = self.lora_layer.rank
        w = self.expert_weights(self.routing) * self.scale
        self._slot_weights = w.repeat_interleave(r, dim=1)

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        m, idx = self.lora_layer, self.routing.indices
        b = idx.shape[0]
        A = torch.cat([m.shared_A.expand(b, -1, -1, -1), m.loraA[idx]], dim=1)  # (B, k+1, r, in)
        B = torch.cat([m.shared_B.expand(b, -1, -1, -1), m.loraB[idx]], dim=1)  # (B, k+1, out, r)
        A = A.flatten(1, 2)  # (B, (k+1)r, in)
        B = B.permute(0, 2, 1, 3).flatten(2, 3)  # (B, out, (k+1)r)
        return A, B

    def _low_rank(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = (x Aᵀ) · slot weights`` ``(B, N, (k+1)r)`` and ``Bᵀ`` ``(B, (k+1)r, out)``."""
        if self.routing is None:
            raise RuntimeError("MoELoRALinear needs set_condition(style_embedding) before the forward pass")
        if torch.is_grad_enabled() or self._A is None:
            A, B = self._gather()
            if not torch.is_grad_enabled():  # sampling: every step of one condition reads the same experts
                self._A, self._B = A, B
        else:
            A, B = self._A, self._B
        h = x.reshape(x.shape[0], -1, x.shape[-1]).to(A.dtype)
        if h.shape[0] != A.shape[0]:
            raise ValueError(f"input batch {h.shape[0]} != conditioned batch {A.shape[0]}")
        z = torch.bmm(h, A.transpose(1, 2)) * self._slot_weights.unsqueeze(1).to(A.dtype)
        return z, B.transpose(1, 2)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for ``x`` ``(B, …, in)``."""
        z, bt = self._low_rank(x)
        return torch.bmm(z, bt).reshape(*x.shape[:-1], bt.shape[-1]).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._merged is not None:
            return y
        z, bt = self._low_rank(x)
        if y.dtype != z.dtype:
            return y + torch.bmm(z, bt).reshape(y.shape).to(y.dtype)
        # one fused kernel for the second matmul and the residual add (profiled: the separate add was ~14%)
        return torch.baddbmm(y.reshape(z.shape[0], -1, bt.shape[-1]), z, bt).reshape(y.shape)

    # ------------------------------------------------------------------------------------- merging
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active experts into the base weight (every sample must share one routing)."""
        if self.routing is None:
            raise RuntimeError("set_condition before merge")
        idx = self.routing.indices
        if not bool((idx == idx[:1]).all()) or not torch.allclose(self._slot_weights, self._slot_weights[:1]):
            raise ValueError("merge needs one style for the whole batch; condition on a single style first")
        if self._merged is not None:
            return
        A, B = self._gather()
        delta_w = (B[0] * self._slot_weights[0].to(B.dtype)) @ A[0]  # (out, in)
        self._merged = self.base.weight.detach().clone()
        self.base.weight.add_(delta_w.to(self.base.weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original base weight."""
        if self._merged is not None:
            self.base.weight.copy_(self._merged)
            self._merged = None


class LoRALinear(_FrozenLinearWrapper):
    """The single-LoRA ablation: one rank-``rank`` LoRA on a frozen linear, no router (``styleexpert-lora``).

    ``h' = W h + bias + (α / r) · B A h`` with A ~ N(0, 1/r), B = 0. The default α = 2·r keeps the same
    effective scale (2) as the mixture.
    """

    def __init__(self, base: nn.Linear, rank: int = 128, alpha: float | None = None) -> None:
        super().__init__(base)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.rank, self.alpha = rank, float(alpha if alpha is not None else 2 * rank)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kw))
        if self.lora_A.device.type != "meta":
            nn.init.normal_(self.lora_A, std=1.0 / rank)

    def set_condition(self, cond: torch.Tensor | None) -> None:
        """No router: the condition is ignored (kept for a uniform interface)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.alpha / self.rank) * F.linear(F.linear(x, self.lora_A), self.lora_B)
