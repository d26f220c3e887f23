"""The style encoder (PAPER.md §2.2–2.3): a frozen vision backbone's multi-layer hidden states through a
small trainable projector, and the multi-positive InfoNCE that trains it.

Per selected layer ℓ (own weights): token mixing ``Linear(T → n_tokens)`` + SiLU over the token axis,
``LayerNorm(C)``, ``Linear(C → hidden)``; the ``L`` results are concatenated along the token axis and
flattened: ``e_s ∈ R^{L · n_tokens · hidden}`` (3 · 8 · 128 = 3072 at full size, SigLIP so400m with
T = 729, C = 1152).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class StyleProjector(ModelMixin, ConfigMixin):
    """The trainable head (``SigLIPMultiFeatProjModel`` of the release, one projection layer)."""

    @register_to_config
    def __init__(self, num_layers: int = 3, backbone_tokens: int = 729, backbone_dim: int = 1152,
                 style_tokens: int = 8, hidden_size: int = 128) -> None:
        super().__init__()
        self.token_mix = nn.ModuleList(nn.Linear(backbone_tokens, style_tokens) for _ in range(num_layers))
        self.norm = nn.ModuleList(nn.LayerNorm(backbone_dim) for _ in range(num_layers))
        self.proj = nn.ModuleList(nn.Linear(backbone_dim, hidden_size) for _ in range(num_layers))

    @property
    def embedding_dim(self) -> int:
        c = self.config
        return c.num_layers * c.style_tokens * c.hidden_size

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``num_layers`` tensors ``(B, T, C)`` → tokens ``(B, num_layers · style_tokens, hidden)``."""
        if len(hidden_states) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} hidden-state layers, got {len(hidden_states)}")
        out = []
        for h, mix, norm, proj in zip(hidden_states, self.token_mix, self.norm, self.proj):
            t = F.silu(mix(h.transpose(1, 2))).transpose(1, 2)  # (B, style_tokens, C)
            out.append(proj(norm(t)))
        return torch.cat(out, dim=1)


class StyleEncoder(nn.Module):
    """Backbone (frozen, any transformers vision model with ``output_hidden_states``) + ``StyleProjector``.

    ``forward(images)`` takes ``(B, 3, H, W)`` float in ``[0, 1]`` and returns the style embedding
    ``(B, embedding_dim)`` float32. Images are resized to the backbone's ``image_size`` (bicubic,
    antialiased) and normalised with ``mean``/``std`` (SigLIP: 0.5/0.5).
    """

    def __init__(self, backbone: nn.Module, projector: StyleProjector, layer_indices: Sequence[int] = (-2, -11, -20),
                 image_size: int | None = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.projector = projector
        self.layer_indices = tuple(layer_indices)
        self.image_size = image_size or int(backbone.config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.projector.embedding_dim

    def train(self, mode: bool = True) -> "StyleEncoder":
        super().train(mode)
        self.backbone.eval()  # the backbone stays frozen and in eval mode (no dropout)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False)
        return ((x - self.mean) / self.std).to(next(self.backbone.parameters()).dtype)

    def hidden_states(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The selected backbone layers, ``(B, T, C)`` each, without gradients."""
        with torch.no_grad():
            out = self.backbone(pixel_values=self.preprocess(images), output_hidden_states=True)
        return [out.hidden_states[i].float() for i in self.layer_indices]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.hidden_states(images))

    def embed(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Projector on precomputed hidden states → ``(B, embedding_dim)`` (cache them to train stage 1 fast)."""
        p = self.projector
        dtype = next(p.parameters()).dtype
        return p([h.to(dtype) for h in hidden_states]).flatten(1).float()


def multi_positive_infonce(e: torch.Tensor, e2: torch.Tensor, labels: torch.Tensor, labels2: torch.Tensor,
                           temperature: float = 0.07) -> torch.Tensor:
    """Multi-positive InfoNCE between two batches (PAPER.md §2.3).

    ``d_ij = cos(e_i, e'_j) / τ``; ``ℓ_ij = log softmax_j d_ij``; ``M_ij = [s_i = s'_j]``;
    ``L = mean_i ( −Σ_j M_ij ℓ_ij / Σ_j M_ij )``.

    Args:
        e, e2: ``(B, D)`` and ``(B', D)`` embeddings.
        labels, labels2: ``(B,)`` and ``(B',)`` integer style labels.
        temperature: τ (default 0.07; not given by the paper).

    Raises:
        ValueError: an anchor has no positive in the second batch (use ``PositivePairSampler``).
    """
    d = F.normalize(e.float(), dim=-1) @ F.normalize(e2.float(), dim=-1).T / temperature
    log_p = torch.log_softmax(d, dim=1)
    mask = (labels.view(-1, 1) == labels2.view(1, -1)).float()
    n_pos = mask.sum(1)
    if bool((n_pos == 0).any()):
        raise ValueError("every anchor needs at least one positive in the second batch; sample with PositivePairSampler")
    return (-(mask * log_p).sum(1) / n_pos).mean()


class PositivePairSampler:
    """Yields ``(batch, batch2)`` index arrays such that every anchor's label appears in ``batch2``.

    Each step draws ``batch_size`` anchors; for each, one item of the same label (a different item where the
    label has several) goes into ``batch2``, which is then shuffled. Deterministic in ``seed``.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise ValueError("labels must be a non-empty 1-D sequence")
        self.batch_size = batch_size
        self.by_label = {int(lab): np.flatnonzero(self.labels == lab) for lab in np.unique(self.labels)}
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.sample()

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        b = self.batch_size
        anchors = self.rng.choice(len(self.labels), size=b, replace=len(self.labels) < b)
        positives = []
        for a in anchors:
            pool = self.by_label[int(self.labels[a])]
            others = pool[pool != a]
            positives.append(self.rng.choice(others) if len(others) else a)
        return anchors, self.rng.permutation(np.asarray(positives))


def projector_param_count(num_layers: int, tokens: int, dim: int, style_tokens: int, hidden: int) -> int:
    """Analytic parameter count of ``StyleProjector`` (467,184 at the full configuration)."""
    per = (tokens * style_tokens + style_tokens) + 2 * dim + (dim * hidden + hidden)
    return num_layers * per


__all__ = ["PositivePairSampler", "StyleEncoder", "StyleProjector", "multi_positive_infonce",
           "projector_param_count"]
