"""What the native diffusion baselines share: a diffusers pipeline loaded with ``from_pretrained`` from a local
folder (``--param NAME.path=DIR``, as ``save_pretrained`` writes it), one (content, style) pair per call with a
CPU generator seeded per sample, and the offload choice; plus the byte-level Qwen tokenizer their tiny test
folders are built with (both pipelines' text encoders are Qwen models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from sxbench.folders import check_folder, check_offload, files_fingerprint, torch_dtype
from sxbench.imageio import resize_to
from sxbench.interfaces import Method


class DiffusersEdit(Method):
    """A multi-image editing pipeline of diffusers given ``[content, style]`` and a fixed instruction.

    Subclasses set ``pipeline_class`` (its name in ``diffusers``), ``hub_id``, ``parts`` (the folder's
    sub-folders) and ``instruction``, and write ``generate``. Parameters every subclass has: ``path`` (required),
    ``resolution`` (output side; the output is resized back to the content's size), ``dtype`` (``auto``: bf16 on
    CUDA, else fp32) and ``offload`` (``none``, ``model`` or ``sequential``: diffusers' own CPU offload; it changes
    where weights live, not the outputs, so it is provenance, not a parameter).
    """

    pipeline_class: ClassVar[str]
    hub_id: ClassVar[str]
    parts: ClassVar[tuple[str, ...]]
    instruction: ClassVar[str]
    deterministic = False
    requires = ("path",)

    def __init__(self, *, device: str | torch.device = "cpu", path: str | None = None, resolution: int = 1024,
                 dtype: str = "auto", offload: str = "none", **params: Any) -> None:
        import diffusers

        index = Path(path) / "model_index.json" if path is not None else None
        named = json.loads(index.read_text()).get("_class_name") if index is not None and index.is_file() else None
        if named is not None and named != self.pipeline_class:  # another pipeline's folder: say so first
            raise ValueError(f"{path}: model_index.json names {named!r}, {self.name} needs a {self.pipeline_class} "
                             f"folder ({self.hub_id})")
        folder = check_folder(path, (*self.parts, "model_index.json"), hub_id=self.hub_id, what=self.name)
        dev = torch.device(device)
        dt = torch_dtype(dtype, dev, f"{self.name}.dtype")
        check_offload(offload, f"{self.name}.offload")
        self.pipe = getattr(diffusers, self.pipeline_class).from_pretrained(folder, dtype=dt)
        if offload == "model":
            self.pipe.enable_model_cpu_offload(device=dev)
        elif offload == "sequential":
            self.pipe.enable_sequential_cpu_offload(device=dev)
        else:
            self.pipe.to(dev)
        self.pipe.set_progress_bar_config(disable=True)
        super().__init__(device=dev, resolution=resolution, dtype=str(dt).removeprefix("torch."),
                         instruction=self.instruction, weights=files_fingerprint(folder, self.parts)[:16],
                         **self.resolve(params))
        self.provenance = {"path": str(folder), **({"offload": offload} if offload != "none" else {})}

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """The sampling parameters with the defaults that depend on the loaded pipeline filled in."""
        return params

    def generate(self, content: Image.Image, style: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """One output ``(3, resolution, resolution)`` in ``[0, 1]``."""
        raise NotImplementedError

    @torch.no_grad()
    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        outs = []
        for content, style, seed in zip(contents, styles, seeds):
            # a CPU generator per sample: the same noise on any device, whatever the batching
            image = self.generate(content, style, torch.Generator("cpu").manual_seed(int(seed))).float().cpu()
            outs.append(resize_to(image[None], *content.size)[0].clamp(0, 1))
        return outs


# ------------------------------------------------------------------------------------- tiny test folders
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>")
"""The Qwen special tokens the two pipelines' prompts use (chat turns, image placeholders, Qwen3's thinking)."""

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}")
"""Qwen3's chat format for user turns (``enable_thinking=False`` writes an empty thinking block, as Qwen3's
own template does)."""


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode map (the alphabet of Qwen's byte-level BPE), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_qwen_tokenizer(chat_template: str | None = None):
    """A Qwen2 byte-level BPE tokenizer with no merges (one token per byte) and Qwen's special tokens after the
    256 bytes, built offline. ``tokenizer.convert_tokens_to_ids`` gives the special ids a tiny model's config
    needs."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_byte_alphabet())}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL)})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_cli(name: str, write: Any, argv: list[str] | None) -> int:
    """``python -m baselines.<module> tiny OUT``: write the method's tiny folder to OUT, print its path."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "tiny":
        print(f"usage: python -m baselines.{name.replace('-', '_')} tiny OUT   (a tiny random {name} folder of the "
              f"real classes, for trying the method on a CPU: --param {name}.path=OUT)", file=sys.stderr)
        return 2
    print(write(Path(args[1])))
    return 0
