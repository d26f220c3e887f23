"""Lazy registry of methods, metrics and protocols.

Everything arrives through entry points (groups ``sxbench.methods``, ``sxbench.metrics``,
``sxbench.protocols``), so in-repo plugins use the same door as third-party ones, and nothing is imported
until it is created. A ``"module:attr"`` string is accepted wherever a name is, and tests may ``register``
objects directly.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any, Callable

log = logging.getLogger(__name__)

KINDS = {"method": "sxbench.methods", "metric": "sxbench.metrics", "protocol": "sxbench.protocols"}


class UnknownNameError(KeyError):
    """A name that is neither registered nor a ``module:attr`` target."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    """Names to lazily loaded objects for one kind (method, metric or protocol)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._extra: dict[str, Any] = {}
        self._entry_points: dict[str, Any] | None = None

    def _eps(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(set(self._eps()) | set(self._extra))

    def register(self, name: str, obj: Any) -> None:
        """Register ``obj`` (a class, a factory or a ``"module:attr"`` string) under ``name``."""
        self._extra[name] = obj

    def unregister(self, name: str) -> None:
        self._extra.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._extra or name in self._eps()

    def get(self, name: str) -> Any:
        """The registered object (class or factory) for ``name``, imported on first use."""
        if name in self._extra:
            obj = self._extra[name]
            return _import_target(obj) if isinstance(obj, str) else obj
        eps = self._eps()
        if name in eps:
            return eps[name].load()
        if ":" in name:
            return _import_target(name)
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names()) or '(none)'}. "
            f"Run `sxbench list {self.kind}s`; plugins register under the entry-point group {self.group!r}."
        )


def _import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


methods = Registry("method", KINDS["method"])
metrics = Registry("metric", KINDS["metric"])
protocols = Registry("protocol", KINDS["protocol"])


def create_method(name: str, **kwargs: Any):
    """A ready ``Method`` instance: ``create_method("reinhard", device="cpu")``."""
    return methods.get(name)(**kwargs)


def create_metric(name: str, **context: Any):
    """A ready metric: ``create_metric("content_ssim")``, ``create_metric("dino_content", weights_dir="w")``.
    Keyword arguments are the fields of ``sxbench.interfaces.EvalContext``; every metric factory takes one."""
    from sxbench.interfaces import EvalContext

    return metrics.get(name)(EvalContext(**context))


def create_protocol(name: str, **kwargs: Any):
    """A ready ``Protocol``: ``create_protocol("synth")``, ``create_protocol("folder", root="my/dir")``."""
    factory: Callable[..., Any] = protocols.get(name)
    return factory(**kwargs)
