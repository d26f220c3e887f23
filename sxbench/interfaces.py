"""The three things a plugin implements: a Method, a Metric and a Protocol.

Images cross these interfaces in two forms:

* methods receive and return ``PIL.Image.Image`` in mode ``RGB`` (8 bits per channel), of the protocol's
  resolution after the recorded resize policy;
* metrics receive ``torch.float32`` tensors of shape ``(B, 3, H, W)`` with values in ``[0, 1]``.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torchmetrics
from PIL import Image
from torchmetrics.utilities import dim_zero_cat

from sxbench.records import MethodInfo, MetricInfo

MethodOutput = Image.Image | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Routing:
    """Expert routing of the last ``stylize_batch`` call of a mixture-of-experts method."""

    indices: dict[str, torch.Tensor]
    """Per layer name: ``(B, k)`` int64 indices of the experts each sample chose."""
    weights: dict[str, torch.Tensor]
    """Per layer name: ``(B, k)`` float32 weights of those experts."""
    num_experts: int
    """Number of routed experts per layer."""


class Method(abc.ABC):
    """A stylization method. Subclasses write ``stylize_batch`` and declare their class attributes.

    Constructor keyword arguments are the method's parameters; ``info`` records their resolved values, so
    two instances with equal parameters share stored outputs.
    """

    name: ClassVar[str]
    """Registry name."""
    version: ClassVar[str] = "1"
    """Bump when outputs change for the same parameters."""
    reference: ClassVar[str] = ""
    """Citation or URL."""
    deterministic: ClassVar[bool] = True
    """Whether the output ignores the seed."""
    licence: ClassVar[str] = ""
    """Licences of the code and of any weights, for the method card."""

    def __init__(self, *, device: str | torch.device = "cpu", **params: Any) -> None:
        self.device = torch.device(device)
        self.params = params

    @property
    def info(self) -> MethodInfo:
        """Name, version and resolved parameters; its ``config_hash`` keys stored outputs."""
        return MethodInfo(
            name=self.name,
            version=self.version,
            params=dict(self.params),
            reference=self.reference,
            deterministic=self.deterministic,
            licence=self.licence,
        )

    @abc.abstractmethod
    def stylize_batch(
        self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]
    ) -> list[MethodOutput]:
        """Stylize ``contents[i]`` with ``styles[i]`` using ``seeds[i]``.

        Args:
            contents: RGB images, all of the protocol resolution.
            styles: RGB style references, one per content; may differ in size from the contents.
            seeds: one seed per sample; deterministic methods may ignore them.

        Returns:
            One output per sample, each an RGB ``PIL.Image``, a ``(H, W, 3)`` array (uint8, or float in
            ``[0, 1]``) or a ``(3, H, W)`` float tensor in ``[0, 1]``. Non-finite float outputs are
            recorded as failures.
        """

    def routing(self) -> Routing | None:
        """Expert routing of the last call, for mixture methods; ``None`` otherwise."""
        return None


class ImageMetric(torchmetrics.Metric, abc.ABC):
    """A per-image metric. Subclasses set ``info`` and write ``score``; the torchmetrics shell (state,
    ``update``, ``compute``, ``reset``, device moves, DDP sync) comes from here.

    ``score`` takes ``output`` and the inputs named in ``info.requires``, each ``(B, 3, H, W)`` float32 in
    ``[0, 1]``, and returns ``(B,)`` float values. ``compute`` is the mean over all updates.
    """

    info: ClassVar[MetricInfo]
    full_state_update: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("info")
        if info is not None:
            cls.higher_is_better = info.higher_is_better
            cls.plot_lower_bound = info.range[0]
            cls.plot_upper_bound = info.range[1]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    @abc.abstractmethod
    def score(
        self,
        output: torch.Tensor,
        *,
        content: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-image values, shape ``(B,)``."""

    def update(
        self,
        output: torch.Tensor,
        *,
        content: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> None:
        self.values.append(self.score(output, content=content, style=style, target=target).detach().float())

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.values).mean()


@dataclass(frozen=True)
class PairSpec:
    """One (content, style) pair of a protocol."""

    pair_id: str
    """Unique within the protocol."""
    content_id: str
    """Content image identifier."""
    style_id: str
    """Style reference identifier."""
    split: str = "all"
    """``seen`` or ``unseen`` where the protocol has splits, else ``all``."""
    level: str = "none"
    """Semantic style level: ``color``, ``texture``, ``material``, ``stroke``, or ``none``."""
    family: str = "none"
    """Style family, or ``none``."""
    has_target: bool = False
    """Whether a ground-truth stylized target exists."""


@dataclass(frozen=True)
class ProtocolSpec:
    """What to run and how to score it. Frozen: a run records it whole."""

    name: str
    """Registry name, e.g. ``synth``."""
    version: str
    """Bumped whenever the images a pair denotes change."""
    resolution: int
    """Square side, in pixels, of every content image given to methods."""
    pairs: tuple[PairSpec, ...]
    """The work list, in order."""
    seeds: tuple[int, ...] = (0,)
    """Default seeds."""
    metrics: tuple[str, ...] = ()
    """Default metric names."""
    resize_policy: str = "crop"
    """How inputs are brought to ``resolution``; see ``sxbench.imageio.fit``."""
    description: str = ""
    """One paragraph for the report."""
    params: dict[str, Any] = field(default_factory=dict)
    """Protocol options, recorded in the run."""


class Protocol(abc.ABC):
    """A protocol: its spec plus the images it denotes. Images are RGB ``PIL.Image`` at ``spec.resolution``."""

    spec: ProtocolSpec
    input_errors: list[str]
    """One line per input file that could not be used (the pairs using it are dropped)."""

    @abc.abstractmethod
    def content(self, content_id: str) -> Image.Image:
        """The content image."""

    @abc.abstractmethod
    def style(self, style_id: str) -> Image.Image:
        """The style reference image."""

    def target(self, pair_id: str) -> Image.Image | None:
        """The ground-truth stylized image, or ``None`` when the protocol has none."""
        return None


def accepted_kwargs(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in sig.parameters}
