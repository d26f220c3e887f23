"""Model folders that methods load: diffusers and transformers ``save_pretrained`` layouts given as
``--param NAME.path=DIR``.

Nothing here downloads. A folder that is not what a method needs is one line naming the hub id to download and
every part that is missing; what identifies gigabytes of weights without reading them is a fingerprint of the
folder's file list (``files_fingerprint``), recorded in the method's parameters so other weights never share
stored outputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

OFFLOADS = ("none", "model", "sequential")


def files_fingerprint(root: str | Path, parts: tuple[str, ...] = (".",), *, mtime: bool = False) -> str:
    """The sha256 (hex) of every file's path relative to ``root``, its size and, with ``mtime``, its modification
    time, under ``root/part`` for each of ``parts``."""
    root = Path(root)
    h = hashlib.sha256()
    for part in parts:
        for f in sorted((root / part).rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}:{st.st_size}{f':{st.st_mtime_ns}' if mtime else ''}\n".encode())
    return h.hexdigest()


def torch_dtype(name: str, device: torch.device, what: str) -> torch.dtype:
    """``auto`` (bf16 on CUDA, else float32), ``bf16`` or ``fp32``; anything else is one line naming ``what``
    (the parameter) and the choices."""
    dtypes = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
              "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"{what}={name!r}: expected one of {', '.join(dtypes)}")
    return dtypes[name]


def check_offload(name: str, what: str, choices: tuple[str, ...] = OFFLOADS) -> str:
    """``name`` if it is one of ``choices`` (of ``OFFLOADS``), else one line naming ``what`` and the choices."""
    if name not in choices:
        raise ValueError(f"{what}={name!r}: expected one of {', '.join(choices)} (model: each component on the "
                         "device only while it runs" + ("; sequential: layer by layer, least memory, slowest)"
                                                        if "sequential" in choices else ")"))
    return name


def check_folder(path: str | Path | None, parts: tuple[str, ...], *, hub_id: str, what: str) -> Path:
    """``path`` as a Path when it holds every one of ``parts`` (sub-folders, or files when the part has a
    suffix), else ``FileNotFoundError`` (``ValueError`` when no path was given) on one line naming ``what``
    (the method), the hub id to download and every missing part."""
    get = f"huggingface-cli download {hub_id} --local-dir DIR"
    if path is None:
        raise ValueError(f"{what} needs --param {what}.path=DIR: a diffusers folder of {hub_id} ({get})")
    path = Path(path)
    missing = [p for p in parts if not ((path / p).is_file() if Path(p).suffix else (path / p).is_dir())]
    if missing:
        raise FileNotFoundError(f"{path}: not a diffusers folder of {hub_id} for {what} (missing "
                                f"{', '.join(m if Path(m).suffix else m + '/' for m in missing)}); "
                                f"{get.replace('DIR', str(path))} and pass it as --param {what}.path={path}")
    return path


FULL_SIZE_ENV = {
    "flux-kontext": {"path": "SXBENCH_FLUX_KONTEXT"},
    "styleexpert": {"flux": "SXBENCH_FLUX_KONTEXT", "siglip": "SXBENCH_SIGLIP",
                    "adapters": "SXBENCH_STYLEEXPERT_ADAPTERS", "projector": "SXBENCH_STYLEEXPERT_PROJECTOR"},
    "qwen-image-edit": {"path": "SXBENCH_QWEN_IMAGE_EDIT"},
    "flux2-klein": {"path": "SXBENCH_FLUX2_KLEIN"},
}
"""The environment variables the GPU tests and ``benchmarks/bench_full_size.py`` read the real folders from,
per method and parameter (``SXBENCH_FLUX_KONTEXT``: a FLUX.1-Kontext-dev folder; ``SXBENCH_SIGLIP``:
google/siglip-so400m-patch14-384; ``SXBENCH_STYLEEXPERT_ADAPTERS`` / ``_PROJECTOR``: the release's files;
``SXBENCH_QWEN_IMAGE_EDIT``: Qwen/Qwen-Image-Edit-2509; ``SXBENCH_FLUX2_KLEIN``: FLUX.2 [klein])."""


def full_size_params(method: str, environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """``method``'s folder parameters from ``FULL_SIZE_ENV``, or ``None`` when any variable is unset."""
    import os

    env = os.environ if environ is None else environ
    params = {k: env.get(v) for k, v in FULL_SIZE_ENV[method].items()}
    return None if any(v is None for v in params.values()) else params
