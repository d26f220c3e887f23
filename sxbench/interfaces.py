"""The three things a plugin implements: a Method, a Metric and a Protocol.

Images cross these interfaces in two forms:

* methods receive and return ``PIL.Image.Image`` in mode ``RGB`` (8 bits per channel), of the protocol's
  resolution after the recorded resize policy;
* metrics receive ``torch.float32`` tensors of shape ``(B, 3, H, W)`` with values in ``[0, 1]``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from sxbench.records import MethodInfo, MetricInfo, stable_hash

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

    ``params`` is what determines the outputs (the parameters and the sha256 of any weights); its hash keys every
    stored sample. ``provenance`` (where the files live, the command that reproduces the weights) is shown on the
    method card and never keys outputs: a subclass fills it after ``super().__init__``, so a clone moved to
    another folder keeps its stored outputs.
    """

    name: ClassVar[str]
    """Registry name."""
    version: ClassVar[str] = "1"
    """Bump when outputs change for the same parameters."""
    reference: ClassVar[str] = ""
    """Citation or URL."""
    deterministic: ClassVar[bool] = True
    """Whether the output ignores the seed."""
    takes_weights_dir: ClassVar[bool] = False
    """Whether the constructor takes ``weights_dir`` (registry backbones, ``sxbench.weights``): the runner then
    passes ``--weights-dir``. Where the weights are is not a parameter: it is not recorded in ``info``."""
    licence: ClassVar[str] = ""
    """Licences of the code and of any weights, for the method card."""

    def __init__(self, *, device: str | torch.device = "cpu", **params: Any) -> None:
        self.device = torch.device(device)
        self.params = params
        self.provenance: dict[str, Any] = {}

    @property
    def info(self) -> MethodInfo:
        """Name, version, resolved parameters and provenance; its ``config_hash`` (of no provenance) keys stored
        outputs."""
        return MethodInfo(
            name=self.name,
            version=self.version,
            params=dict(self.params),
            reference=self.reference,
            deterministic=self.deterministic,
            licence=self.licence,
            provenance=dict(self.provenance),
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


@dataclass(frozen=True)
class EvalContext:
    """Everything a metric is built from, given explicitly (``factory(context)``; nothing is sniffed from
    signatures). ``sxbench.evaluation.Evaluator`` makes one per run and shares it between all metrics."""

    device: str = "cpu"
    """Device the backbones run on."""
    weights_dir: str | None = None
    """Pretrained weights folder (``sxbench.weights``); ``None``: ``$SXBENCH_WEIGHTS`` or the user cache."""
    cache: Any = None
    """The run's ``sxbench.features.FeatureCache`` (memory, and the run folder's feature files); ``None``:
    the metric keeps its own in memory."""


class Metric(abc.ABC):
    """The one shape of every metric: a ``MetricInfo`` (whose ``scope`` says what one value describes), built as
    ``factory(context)`` from an ``EvalContext``, evaluated by one method whose input depends on the scope:

    * ``image`` (``ImageMetric``): ``score(output, *, content, style, target, keys) → (B,)``, one value per output;
    * ``set`` (``sxbench.metrics.sets.SetMetric``): ``compute(view) → float | None`` over the features of a
      method's outputs in one subset (``all``, ``split=seen``, …);
    * ``experts`` (``sxbench.metrics.experts.ExpertMetric``): ``compute(view) → float`` over a mixture method's
      stored routing.

    Why not torchmetrics' ``Metric``: its state is a running aggregate that ``compute`` reduces, but sxbench
    stores every per-image value under its sample key, chooses the subsets of a set metric after scoring, and
    shares backbone features between metrics through one cache; ``update``/``compute`` would be an unused shell.
    See ``sxbench.evaluation`` for how the evaluator drives the three scopes.
    """

    info: ClassVar[MetricInfo]

    def __init__(self, context: EvalContext | None = None) -> None:
        self.context = context if context is not None else EvalContext()


class ImageMetric(Metric):
    """A per-image metric. Subclasses set ``info`` and write ``score``.

    ``score`` takes ``output`` and the inputs named in ``info.requires``, each ``(B, 3, H, W)`` float32 in
    ``[0, 1]``, and returns ``(B,)`` float values. ``keys`` (``{"output": [...], "content": [...], "style":
    [...]}``, one stable image id per row, e.g. the image's sha256) lets metrics on a pretrained backbone take
    features from the run's ``FeatureCache`` instead of running the backbone again; weight-free metrics ignore it.
    """

    @abc.abstractmethod
    def score(
        self,
        output: torch.Tensor,
        *,
        content: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        keys: dict[str, Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Per-image values, shape ``(B,)``."""


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
    inputs: str = ""
    """Digest of the bytes of the pair's input files (content, style, target) for protocols that read files
    (``folder``, ``paper``, ``photos``); ``""`` where the images are generated from the protocol's version and
    options. Part of the sample key (``ProtocolSpec.setup``): an edited input file regenerates its pairs."""


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

    LOCATION_PARAMS = ("root",)
    """``params`` that say where inputs live, not what they are: left out of ``setup`` (the input bytes are in)."""

    def setup(self, pair: PairSpec) -> str:
        """Digest of everything besides the method, ids and seed that determines ``pair``'s output: resolution,
        resize policy, options (not where the files live) and the pair's input bytes (``PairSpec.inputs``)."""
        options = {k: v for k, v in self.params.items() if k not in self.LOCATION_PARAMS}
        return stable_hash([self.resolution, self.resize_policy, options, pair.inputs], 16)


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
