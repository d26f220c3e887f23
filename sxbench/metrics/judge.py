"""The "semantic stylisation" judge: a Qwen2.5-VL model rates, 0-100, whether a stylisation transfers the
reference's *semantic* style elements (texture, material, brush strokes) rather than only its colours, while
keeping the content's scene.

The StyleExpert paper reports such a score from a Qwen VLM; it does not fix a prompt, so the prompt below is
this project's own wording. **The prompt (``build_messages``) and the answer parsing (``parse_score``) are
versioned code**: a score is only comparable with scores produced under the same ``PROMPT_VERSION`` (and the
same model weights). Bump ``PROMPT_VERSION`` whenever either changes, even by a word or a regex character.

Version history: ``1`` showed the judge the style reference and the output only, so a copy of the style
reference could score high; ``2`` shows it the content, the style reference and the output, in that order
(``IMAGE_ORDER``), and asks it to score an output that does not show the content's scene low.

Decoding is greedy (``do_sample=False``; sampling fields of the folder's ``generation_config`` are switched
off, everything else, e.g. its ``repetition_penalty``, is kept), so a score is deterministic for given
weights, dtype and device.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROMPT_VERSION = "2"
"""Version of the prompt text, the images shown and the answer parsing together; bump it when any changes."""

IMAGE_ORDER = ("content", "style", "output")
"""The images of one judgement, in the order the prompt shows them (part of ``PROMPT_VERSION``)."""

INSTRUCTION = (
    "The first image is the content: the scene to re-render. The second image is a style reference. The third "
    "image is a stylized output: the content's scene re-rendered in the style of the reference.\n"
    "Judge the semantic stylisation: does the output show the content's scene, with its surfaces taking on the "
    "reference's texture, material and brush strokes (or other mark-making), not only its colours? An output "
    "that merely copies the colour palette while keeping smooth photographic surfaces deserves a low score. An "
    "output that does not show the content's scene (a copy of the style reference, or another scene) deserves "
    "a low score, however well it matches the style. An output that shows the content's scene with its "
    "surfaces rendered in the reference's textures, materials and strokes deserves a high score, whatever its "
    "colours.\n"
    "Reply with one short sentence of reasoning, then answer on the last line as SCORE: <integer 0-100>."
)
"""The text part of the user turn (part of ``PROMPT_VERSION``)."""

MAX_PLAUSIBLE = 1000.0
"""A number above this after ``SCORE:`` is taken as garbage (``None``), not clipped to 100."""

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_RE = re.compile(r"\bscore\b[\s*_]*[:=][\s*_]*" + _NUMBER, re.IGNORECASE)
_FRACTION_RE = re.compile(r"(?<![\d.])" + _NUMBER + r"\s*/\s*100(?!\d|\.\d)")


def build_messages() -> list[dict[str, Any]]:
    """The chat messages (transformers' multimodal chat format) for one judgement.

    One user turn: an image placeholder for each of ``IMAGE_ORDER`` (the content, the style reference, the
    stylized output), then ``INSTRUCTION``. The placeholders carry no pixels; the images go to the processor in
    the same order.
    """
    return [
        {
            "role": "user",
            "content": [*({"type": "image"} for _ in IMAGE_ORDER), {"type": "text", "text": INSTRUCTION}],
        }
    ]


def parse_score(text: str) -> float | None:
    """The score in a judge's answer, in ``[0, 100]``, or ``None`` when there is none.

    Rules (part of ``PROMPT_VERSION``):

    1. Candidates are (a) the word ``score`` (any case, whole word) followed by ``:`` or ``=``, with any
       spaces, ``*`` or ``_`` (markdown emphasis) around the separator, then a number: ``SCORE: 85``,
       ``**SCORE:** 85``, ``**Score**: 85``, ``score = 85``; and (b) a number followed by ``/100``:
       ``85/100``, ``85 / 100``. A number is written in digits, with an optional sign and decimal part;
       numbers in words (``eighty``) are not read.
    2. The candidate whose number comes LAST in the text decides (the answer's final line wins over numbers
       quoted earlier in the reasoning); earlier candidates are never a fallback.
    3. Its number is ``None`` if it exceeds ``MAX_PLAUSIBLE`` (1000), else it is clipped to ``[0, 100]``.
    4. No candidate (empty text, ``"I cannot tell"``, ``"SCORE: <integer 0-100>"``): ``None``.
    """
    candidates = [(m.start(1), m.group(1)) for m in _SCORE_RE.finditer(text)]
    candidates += [(m.start(1), m.group(1)) for m in _FRACTION_RE.finditer(text)]
    if not candidates:
        return None
    value = float(max(candidates)[1])
    if not math.isfinite(value) or value > MAX_PLAUSIBLE:
        return None
    return min(max(value, 0.0), 100.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(B, 3, H, W)`` float images in ``[0, 1]`` to ``B`` RGB PIL images (values clamped, rounded to 8 bit)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arr]


class QwenJudge:
    """A Qwen2.5-VL model with its processor, rating ``(content, style, output)`` triplets 0-100 (``parse_score`` of
    its answer).

    ``rate`` runs the whole batch in ONE ``generate`` call: the processor pads on the left (set in
    ``from_folder``), which Qwen2.5-VL's generation supports (its multimodal RoPE positions follow the attention
    mask; ``tests/test_judge.py`` checks that left-padded batch logits equal single-prompt logits). With
    same-size images all prompts have the same length anyway, so no padding happens in practice. Memory grows
    with B times the image tokens (about (H/28)*(W/28) per image for the hub processors), so callers chunk large
    batches.
    ``last_answers`` keeps the decoded answers of the last ``rate`` call, for logging, and ``last_parse_failures``
    counts those without a score (their values are NaN).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.processor = processor
        self.device = torch.device(device)
        self.prompt_version = PROMPT_VERSION
        self.last_answers: list[str] = []

    @property
    def last_parse_failures(self) -> int:
        """How many answers of the last ``rate`` call had no parseable score (``parse_score`` is ``None``)."""
        return sum(parse_score(a) is None for a in self.last_answers)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> QwenJudge:
        """Load processor and model from a local copy of a Qwen2.5-VL hub repo (e.g. Qwen/Qwen2.5-VL-7B-Instruct)."""
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        folder = Path(folder)
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        model.to(device).eval()
        return cls(model, processor, device)

    def prompt(self) -> str:
        """The rendered prompt text (chat template applied, generation prompt added)."""
        return self.processor.apply_chat_template(build_messages(), add_generation_prompt=True, tokenize=False)

    def _generation_config(self, max_new_tokens: int) -> Any:
        """The folder's generation config with sampling off (sampling fields at transformers' neutral defaults,
        so nothing is reported as ignored)."""
        cfg = copy.deepcopy(self.model.generation_config)
        cfg.do_sample = False
        cfg.temperature = 1.0
        cfg.top_p = 1.0
        cfg.top_k = 50
        cfg.num_beams = 1
        cfg.max_new_tokens = max_new_tokens
        cfg.max_length = None
        return cfg

    @torch.inference_mode()
    def rate(self, outputs: torch.Tensor, *, contents: torch.Tensor, styles: torch.Tensor,
             max_new_tokens: int = 64) -> torch.Tensor:
        """Scores ``(B,)`` float32 in ``[0, 100]`` (NaN where the answer has no parseable score) for stylized
        ``outputs`` of ``contents`` in the style of ``styles``, each ``(B, 3, H, W)`` float in ``[0, 1]`` (sizes
        may differ between the three)."""
        images = {"content": contents, "style": styles, "output": outputs}
        for role, x in images.items():
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected (B, 3, H, W) {role} images, got {tuple(x.shape)}")
        if len({x.shape[0] for x in images.values()}) != 1:
            raise ValueError("batch sizes differ: " + ", ".join(f"{x.shape[0]} {r}s" for r, x in images.items()))
        n = outputs.shape[0]
        if n == 0:
            self.last_answers = []
            return torch.empty(0, dtype=torch.float32, device=outputs.device)
        triplets = [list(t) for t in zip(*(to_pil(images[role]) for role in IMAGE_ORDER))]  # build_messages' order
        inputs = self.processor(text=[self.prompt()] * n, images=triplets, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        generated = self.model.generate(**inputs, generation_config=self._generation_config(max_new_tokens))
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        self.last_answers = [str(a) for a in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        scores = [parse_score(a) for a in self.last_answers]
        return torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32,
                            device=outputs.device)
