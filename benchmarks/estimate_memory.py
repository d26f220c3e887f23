"""Weights memory of the full-size methods, from parameter counts on the meta device (nothing is allocated).

Run: ``python benchmarks/estimate_memory.py`` (prints one line per component and per method, bf16).
Activations come on top (at 1024² the Kontext layout has 4,096 noisy + 8,192 context image tokens + 128 text
tokens); measure them with ``nox -s gpu_bench`` on a GPU.

Configs: FLUX.1-Kontext-dev, T5-XXL, CLIP-L and SigLIP so400m as published on their model cards (the ``full``
preset); Qwen-Image-Edit-2509 as diffusers' ``QwenImageTransformer2DModel`` / ``AutoencoderKLQwenImage``
defaults (Qwen-Image's) and Qwen2.5-VL-7B-Instruct's config; FLUX.2 [klein] 4B as its model card and
independent ports describe it (5 double + 20 single blocks of 24 heads × 128, 128 latent channels, Qwen3-4B:
2,560 wide, 36 layers). Check them against the folders' ``config.json`` when you have the weights.
"""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLQwenImage, Flux2Transformer2DModel,
                       FluxTransformer2DModel, QwenImageTransformer2DModel)
from transformers import (CLIPTextConfig, CLIPTextModel, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel)

from styleexpert.pipeline import build
from styleexpert.presets import get_preset

GIB = 2**30


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tied(model) -> int:
    """Parameters of a causal LM whose config ties its output embedding to its input one (counted once: on the
    meta device nothing ties them)."""
    return count(model) - model.lm_head.weight.numel()


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
            "transformer (Qwen-Image-Edit-2509)": count(QwenImageTransformer2DModel()),
            "Qwen2.5-VL-7B (its text encoder)": count(Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
                text_config={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
                vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                               "out_hidden_size": 3584}, vocab_size=152064, tie_word_embeddings=False))),
            "QwenImage VAE": count(AutoencoderKLQwenImage()),
            "transformer (FLUX.2 klein 4B)": count(Flux2Transformer2DModel(
                num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=3 * 2560,
                guidance_embeds=False)),
            "Qwen3-4B (its text encoder)": _tied(Qwen3ForCausalLM(Qwen3Config(
                vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True))),
            "FLUX.2 VAE": count(AutoencoderKLFlux2()),
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
    # the diffusers pipelines keep their text encoder: Qwen-Image-Edit's prompt holds the images, so its VLM runs
    # for every sample; offload=model keeps one component on the GPU at a time (the largest sets the peak)
    for name, parts_of in {"qwen-image-edit": ("transformer (Qwen-Image-Edit-2509)", "Qwen2.5-VL-7B (its text encoder)",
                                               "QwenImage VAE"),
                           "flux2-klein": ("transformer (FLUX.2 klein 4B)", "Qwen3-4B (its text encoder)",
                                           "FLUX.2 VAE")}.items():
        sizes = [parts[p] for p in parts_of]
        print(f"{name:34s} resident while sampling {2 * sum(sizes) / GIB:5.1f} GiB; with offload=model "
              f"{2 * max(sizes) / GIB:.1f} GiB at a time")
