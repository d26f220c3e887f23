"""Weights memory of the full-size methods, from parameter counts on the meta device (nothing is allocated).

Run: ``python benchmarks/estimate_memory.py`` (prints one line per component and per method, bf16).
Activations come on top (at 1024² the Kontext layout has 4,096 noisy + 8,192 context image tokens + 128 text
tokens); measure them with ``nox -s gpu_bench`` on a GPU.
"""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel

from styleexpert.pipeline import build
from styleexpert.presets import get_preset

GIB = 2**30


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def components() -> dict[str, int]:
    """Parameters of FLUX.1-Kontext-dev's parts and SigLIP so400m, built from their published configs."""
    with init_empty_weights():
        return {
            "transformer (FLUX.1-Kontext-dev)": count(FluxTransformer2DModel(**get_preset("full")["transformer"])),
            "T5-XXL encoder": count(T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
                                                            num_layers=24, num_heads=64,
                                                            feed_forward_proj="gated-gelu"))),
            "CLIP-L text": count(CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                              num_hidden_layers=12, num_attention_heads=12,
                                                              max_position_embeddings=77))),
            "VAE": count(AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512),
                                       down_block_types=("DownEncoderBlock2D",) * 4,
                                       up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                                       use_quant_conv=False, use_post_quant_conv=False)),
            "SigLIP so400m vision": count(SiglipVisionModel(SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14))),
        }


if __name__ == "__main__":
    parts = components()
    for name, n in parts.items():
        print(f"{name:34s} {n / 1e9:6.3f} B parameters  {2 * n / GIB:5.1f} GiB in bf16")
    text = parts["T5-XXL encoder"] + parts["CLIP-L text"]
    resident = {"flux-kontext": parts["transformer (FLUX.1-Kontext-dev)"] + parts["VAE"],
                "styleexpert (moe)": count(build("full", "moe", device="meta")),
                "styleexpert-lora": count(build("full", "lora", device="meta"))}
    for name, n in resident.items():
        print(f"{name:34s} resident while sampling {2 * n / GIB:5.1f} GiB; the text encoders ({2 * text / GIB:.1f} GiB) "
              "only once per instruction, freed before the transformer loads")
