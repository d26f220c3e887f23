"""Qwen-Image-Edit (2509, multi-image), native through diffusers' ``QwenImageEditPlusPipeline``.

One of the six baselines of StyleExpert's main table (PAPER.md §8: "multi-image instruction editing"; the paper does
not say which version, and 2509 is the release that takes several images). The content is Picture 1, the style
reference Picture 2, and a fixed instruction (``INSTRUCTION``, versioned with the method) asks for the style of
one on the other. Defaults are the model card's: 40 steps, true CFG 4.0 with the negative prompt ``" "``.

The pipeline encodes every reference image into latents at about 1 MP (its ``VAE_IMAGE_SIZE``) and shows it to
Qwen2.5-VL at about 384² (``CONDITION_IMAGE_SIZE``), whatever the output size. ``reference_area`` sets the first
(default: the pipeline's own 1024²); it is a recorded parameter, so outputs at another area are another
configuration. Tiny test folders use it to run on a CPU.

``python -m baselines.qwen_image_edit tiny OUT`` writes a tiny folder of the real classes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from baselines._diffusers import DiffusersEdit, tiny_cli, tiny_qwen_tokenizer

HUB_ID = "Qwen/Qwen-Image-Edit-2509"
INSTRUCTION = ("Redraw Picture 1 in the artistic style of Picture 2: keep the content, composition and layout of "
               "Picture 1, and take the colours, textures, materials and brushwork of Picture 2.")
"""The style-transfer instruction (version 1). Changing it changes ``QwenImageEdit.version``."""
PIPELINE_VAE_AREA = 1024 * 1024


@contextlib.contextmanager
def _vae_area(area: int) -> Iterator[None]:
    """Set the pipeline module's reference latent area for one call (restored after)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    if not hasattr(module, "VAE_IMAGE_SIZE"):  # a diffusers whose pipeline reads the area elsewhere
        raise RuntimeError("this diffusers' QwenImageEditPlusPipeline has no VAE_IMAGE_SIZE; reference_area "
                           f"cannot be set (leave it at {PIPELINE_VAE_AREA})")
    before = module.VAE_IMAGE_SIZE
    module.VAE_IMAGE_SIZE = area
    try:
        yield
    finally:
        module.VAE_IMAGE_SIZE = before


class QwenImageEdit(DiffusersEdit):
    """Qwen-Image-Edit-2509: content and style as Picture 1 and 2 of one editing instruction."""

    name = "qwen-image-edit"
    version = "1"
    reference = ("Qwen team, Qwen-Image Technical Report (arXiv 2508.02324), Qwen/Qwen-Image-Edit-2509, run with "
                 "diffusers' QwenImageEditPlusPipeline; one of StyleExpert's baselines (CVPR 2026, Table 1)")
    licence = "code: Apache-2.0 (diffusers); weights: Apache-2.0 (Qwen-Image-Edit-2509)"
    pipeline_class = "QwenImageEditPlusPipeline"
    hub_id = HUB_ID
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler")
    instruction = INSTRUCTION
    """Parameters without a default: ``path``, a diffusers folder of Qwen/Qwen-Image-Edit-2509."""

    def __init__(self, *, device: str | torch.device = "cpu", path: str | None = None, steps: int = 40,
                 true_cfg_scale: float = 4.0, negative_prompt: str = " ", resolution: int = 1024,
                 reference_area: int = PIPELINE_VAE_AREA, dtype: str = "auto", offload: str = "none") -> None:
        if reference_area < 32 * 32:
            raise ValueError(f"qwen-image-edit.reference_area={reference_area}: at least 1024 pixels "
                             f"(default {PIPELINE_VAE_AREA}, the pipeline's)")
        super().__init__(device=device, path=path, resolution=resolution, dtype=dtype, offload=offload, steps=steps,
                         true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt,
                         reference_area=reference_area)

    def generate(self, content: Image.Image, style: Image.Image, generator: torch.Generator) -> torch.Tensor:
        p, r = self.params, self.params["resolution"]
        with _vae_area(p["reference_area"]):
            out = self.pipe(image=[content, style], prompt=self.instruction, negative_prompt=p["negative_prompt"],
                            true_cfg_scale=p["true_cfg_scale"], num_inference_steps=p["steps"], height=r, width=r,
                            generator=generator, output_type="pt")
        return out.images[0]


def write_tiny(root: str | Path, seed: int = 0) -> Path:
    """A Qwen-Image-Edit-2509 diffusers folder of the real classes at tiny sizes (random weights): Qwen2.5-VL of
    width 16 (2 layers; its vision tower 2 layers), its processor and a byte-level tokenizer built offline, a
    1-layer QwenImage transformer (2 heads × 8) and a 3-level QwenImage VAE of 4 latent channels.
    ``QwenImageEditPlusPipeline.from_pretrained(root)`` loads it; so does ``sxbench run``."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    root, width, z = Path(root), 16, 4
    tok = tiny_qwen_tokenizer()
    ids = dict(zip(("image", "video", "start", "end", "pad"), tok.convert_tokens_to_ids(
        ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"])))
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": width, "intermediate_size": width, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tok), "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
                     "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
                     "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>")},
        vision_config={"depth": 2, "hidden_size": width, "intermediate_size": width, "num_heads": 2,
                       "out_hidden_size": width},
        hidden_size=width, vocab_size=len(tok), image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["start"], vision_end_token_id=ids["end"], vision_token_id=ids["pad"],
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor())
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=4 * z, out_channels=z, num_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=width,
                                              guidance_embeds=False, axes_dims_rope=(4, 2, 2))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * z, latents_std=[1.0] * z)
    QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tok, processor=processor, transformer=transformer).save_pretrained(root)
    return root


def main(argv: list[str] | None = None) -> int:
    return tiny_cli(QwenImageEdit.name, write_tiny, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = ["INSTRUCTION", "QwenImageEdit", "write_tiny"]
