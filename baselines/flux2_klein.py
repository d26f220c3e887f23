"""FLUX.2 [klein], multi-reference editing, native through diffusers' ``Flux2KleinPipeline``.

Why this one as the third diffusers baseline: it is what people run today for reference-based editing with
diffusers (one folder, no adapters or ControlNets to assemble, unlike SDXL + IP-Adapter in InstantStyle's
configuration, which also needs an image encoder, the adapter file and a ControlNet to keep the content); it
takes several reference images natively; its 4B model is Apache-2.0; and it is Flux.1-Kontext's successor, so
next to ``flux-kontext`` it shows what a newer base model alone brings against StyleExpert's experts.

The content and the style reference are image 1 and image 2 (both at the output resolution, 64² at least), with a fixed
instruction (``INSTRUCTION``, versioned with the method). Defaults follow the folder: a step-distilled model
(``model_index.json``: ``is_distilled``, e.g. ``black-forest-labs/FLUX.2-klein-4B``) samples 4 steps at guidance 1
(none); a base model 50 steps at CFG 4, as diffusers' example does.

``python -m baselines.flux2_klein tiny OUT`` writes a tiny folder of the real classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from baselines._diffusers import QWEN3_CHAT_TEMPLATE, DiffusersEdit, tiny_cli, tiny_qwen_tokenizer

HUB_ID = "black-forest-labs/FLUX.2-klein-4B"
INSTRUCTION = ("Redraw image 1 in the artistic style of image 2: keep the content, composition and layout of "
               "image 1, and take the colours, textures, materials and brushwork of image 2.")
"""The style-transfer instruction (version 1). Changing it changes ``Flux2Klein.version``."""
MIN_REFERENCE = 64
"""The pipeline's smallest reference side (``Flux2ImageProcessor.check_image_input``)."""


class Flux2Klein(DiffusersEdit):
    """FLUX.2 [klein] with content and style as its two reference images."""

    name = "flux2-klein"
    version = "1"
    reference = ("Black Forest Labs, FLUX.2 [klein] (2026), black-forest-labs/FLUX.2-klein-4B, run with diffusers' "
                 "Flux2KleinPipeline (multi-reference editing)")
    licence = "code: Apache-2.0 (diffusers); weights: Apache-2.0 (klein 4B; the 9B models: FLUX Non-Commercial)"
    pipeline_class = "Flux2KleinPipeline"
    hub_id = HUB_ID
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    instruction = INSTRUCTION
    """Parameters without a default: ``path``, a diffusers folder of FLUX.2 [klein]."""

    def __init__(self, *, device: str | torch.device = "cpu", path: str | None = None, steps: int | None = None,
                 guidance: float | None = None, resolution: int = 1024, dtype: str = "auto",
                 offload: str = "none") -> None:
        super().__init__(device=device, path=path, resolution=resolution, dtype=dtype, offload=offload, steps=steps,
                         guidance=guidance)

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        distilled = bool(self.pipe.config.get("is_distilled", False))
        return {"steps": params["steps"] or (4 if distilled else 50),
                "guidance": params["guidance"] if params["guidance"] is not None else (1.0 if distilled else 4.0),
                "distilled": distilled}

    def generate(self, content: Image.Image, style: Image.Image, generator: torch.Generator) -> torch.Tensor:
        p, r = self.params, self.params["resolution"]
        side = max(r, MIN_REFERENCE)
        refs = [im if im.size == (side, side) else im.resize((side, side), Image.Resampling.LANCZOS)
                for im in (content, style)]
        out = self.pipe(image=refs, prompt=self.instruction, height=r, width=r, num_inference_steps=p["steps"],
                        guidance_scale=p["guidance"], generator=generator, output_type="pt")
        return out.images[0]


def write_tiny(root: str | Path, seed: int = 0) -> Path:
    """A FLUX.2 [klein] diffusers folder of the real classes at tiny sizes (random weights), step-distilled as
    klein-4B: Qwen3 of width 16 with 28 layers (the pipeline reads its layers 9, 18 and 27) and a byte-level
    tokenizer with Qwen3's chat format built offline, a 1+1-block Flux2 transformer (2 heads × 16) and a 2-level
    Flux2 VAE of 4 latent channels. ``Flux2KleinPipeline.from_pretrained(root)`` loads it; so does ``sxbench run``."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root, width = Path(root), 16
    tok = tiny_qwen_tokenizer(QWEN3_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=width, intermediate_size=width, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>")))
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                             latent_channels=4, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * width,
                                          timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tok,
                       transformer=transformer, is_distilled=True).save_pretrained(root)
    return root


def main(argv: list[str] | None = None) -> int:
    return tiny_cli(Flux2Klein.name, write_tiny, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = ["INSTRUCTION", "Flux2Klein", "write_tiny"]
