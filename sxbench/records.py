"""Frozen records shared by the runner, the store, the metrics and the report.

Every field holds one value; nothing is packed into strings. Records are plain data so that the store can
write them column for column and the report can read them back with pandas.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["higher", "lower"]
Requirement = Literal["content", "style", "target"]
Scope = Literal["image", "set", "experts"]


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest (``n`` characters) of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def sample_key_of(method_config: str, protocol: str, protocol_version: str, pair_id: str, content_id: str,
                  style_id: str, seed: int, setup: str = "") -> str:
    """Content hash of (method config, protocol, content, style, seed, setup): a sample's key and PNG stem.

    ``setup`` (``ProtocolSpec.setup``) covers the rest of what determines the output: resolution, resize policy,
    protocol options and the bytes of the pair's input files. Stores before schema 3 keyed samples without it
    (``""``); ``sxbench.runner.reconcile`` moves such samples onto the full key where it can prove the setup."""
    parts: list[Any] = [method_config, protocol, protocol_version, pair_id, content_id, style_id, seed]
    return stable_hash(parts + [setup] if setup else parts, 24)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_digest(image: Any) -> str:
    """Digest (16 hex) of an image's pixels as 8-bit RGB with its size: the same picture gives the same digest
    whatever file format or metadata carried it (a PIL image or an ``(H, W, 3)`` uint8 array)."""
    import numpy as np

    arr = np.ascontiguousarray(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8))
    h = hashlib.sha256(f"{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class MethodInfo:
    """What identifies a method's outputs: two runs with equal infos produce the same images."""

    name: str
    """Registry name, e.g. ``"reinhard"``."""
    version: str
    """Implementation version; bump it when outputs change for the same parameters."""
    params: dict[str, Any] = field(default_factory=dict)
    """Resolved constructor parameters (defaults filled in), JSON-serialisable."""
    reference: str = ""
    """Citation or URL of the method."""
    deterministic: bool = True
    """Whether the output ignores the seed."""
    licence: str = ""
    """Licences of the code and of the weights (method card; not part of ``config_hash``)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the method's files live and how to reproduce them (checkpoint folder, training command, import
    folder and date): shown on the method card, never part of ``config_hash``, so moving a clone or re-annotating
    an import keeps every stored output. What determines the outputs (parameters, weights sha256) is ``params``."""
    control: bool = False
    """A reference point, not a contender (``identity``: output = content; ``stylecopy``: output = style): the report
    shows it as a reference row, never ranked. Not part of ``config_hash``."""

    @property
    def config_hash(self) -> str:
        """Short hash of name, version and parameters (identity, not provenance); part of every sample key."""
        return stable_hash({"name": self.name, "version": self.version, "params": self.params})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


IMPORTED_VERSION = "imported"
"""``MethodInfo.version`` of outputs brought in by ``sxbench import`` (made outside sxbench, never re-run)."""


@dataclass(frozen=True)
class ImportedMethodInfo(MethodInfo):
    """An external method's imported outputs. ``params`` holds only ``digest`` (of the imported pixels), so the
    sample keys follow the images; where and when they came from is ``provenance`` (``source`` import folder,
    ``notes``, ``imported_at`` UTC ISO 8601, ``files`` and ``problems`` counts), outside the key."""


@dataclass(frozen=True)
class MetricInfo:
    """A metric's self-description; every stored value carries it."""

    name: str
    """Registry name, e.g. ``"content_ssim"``."""
    higher_is_better: bool
    """Direction: the report ranks by it and never hard-codes which way is better."""
    range: tuple[float, float]
    """Closed value range; ``math.inf`` where unbounded."""
    group: str
    """Report group: fidelity, style, detail, quality, experts or efficiency."""
    requires: frozenset[str]
    """Inputs besides the output: any of ``content``, ``style``, ``target``."""
    version: str = "1"
    """Bumped when values change for the same images."""
    backbone: str | None = None
    """Name of the pretrained backbone in the weights module, ``None`` for weight-free metrics."""
    description: str = ""
    """One sentence for the report."""
    scope: Scope = "image"
    """What one value describes: ``image`` (one output), ``set`` (a method's outputs over a subset: FID) or
    ``experts`` (a mixture method's routing). See ``sxbench.evaluation``."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["requires"] = sorted(self.requires)
        d["range"] = list(self.range)
        return d


@dataclass(frozen=True)
class SampleRecord:
    """One produced (or failed) output: a (method, pair, seed) cell of the grid."""

    sample_key: str
    """Hash of method config, protocol, pair and seed; primary key and PNG file stem."""
    run_id: str
    """Run that produced it."""
    method: str
    """Method registry name."""
    method_config: str
    """``MethodInfo.config_hash`` of the method instance."""
    protocol: str
    """Protocol name."""
    protocol_version: str
    """Protocol version."""
    pair_id: str
    """Pair identifier within the protocol."""
    content_id: str
    """Content image identifier."""
    style_id: str
    """Style reference identifier."""
    seed: int
    """Seed passed to the method."""
    split: str
    """``seen``, ``unseen`` or ``all``."""
    level: str
    """Semantic style level (``color``, ``texture``, ``material``, ``stroke``) or ``none``."""
    family: str
    """Style family, or ``none``."""
    status: Literal["ok", "error"]
    """Whether an output was produced."""
    error: str | None
    """Error message when ``status == "error"``."""
    output_path: str | None
    """PNG path relative to the run folder."""
    latency_s: float
    """Wall-clock seconds of the batch divided by its size."""
    batch_size: int
    """Number of samples in the batch that produced it."""
    peak_memory_bytes: int
    """Peak CUDA allocator memory during the batch, or process peak RSS on CPU."""
    memory_kind: str
    """``cuda_allocated`` or ``cpu_rss``."""
    device: str
    """Device the method ran on."""
    setup: str = ""
    """``ProtocolSpec.setup`` of the pair (resolution, resize policy, options, input bytes); part of the key.
    ``""``: stored before schema 3, setup unknown."""
    resolution: int = 0
    """Side of the output in pixels (``0``: stored before schema 3)."""


@dataclass(frozen=True)
class MetricValue:
    """One metric value of one sample, with the metric's description attached."""

    sample_key: str
    """Sample it scores."""
    metric: str
    """Metric name."""
    value: float
    """The value, in the metric's own units."""
    higher_is_better: bool
    """Copied from the metric so the value is self-describing in the store."""
    metric_group: str
    """The metric's report group, copied from it."""
    version: str
    """Metric version."""
    backbone: str | None
    """Backbone name, ``None`` for weight-free metrics."""
    weights: str | None = None
    """sha256 of the backbone weights that computed it (``None``: weight-free, or stored before schema 3).
    A value whose weights differ from the loaded backbone's is rescored, never pooled."""
