"""FLUX.1-Kontext folders: the instruction encoded with the folder's own text encoders, and tiny folders.

``encode_instruction(flux_dir)`` is what ``FluxKontextPipeline.encode_prompt`` computes, with the folder's CLIP
(pooled output) and T5 (sequence) encoders: ``{"prompt_embeds": (T, joint_attention_dim), "pooled_prompt_embeds":
(pooled_projection_dim,)}``. It is cached per (folder, prompt, length) under ``$SXBENCH_CACHE`` (default
``~/.cache/sxbench/prompts``), so T5-XXL (about 9.5 GB in bf16) loads once per instruction, and the encoders are
freed right after.

``write_tiny_kontext(root)`` writes a FLUX.1-Kontext folder of the real classes with random weights and tiny sizes,
as ``FluxKontextPipeline.save_pretrained`` lays it out (``transformer/``, ``vae/``, ``text_encoder/``,
``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``, ``model_index.json``), tokenizers built
offline. Tests and the README's example load it through the same code as the real folder:
``python -m styleexpert.kontext tiny OUT``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from sxbench.folders import files_fingerprint

INSTRUCTION = "Generate an image using the object from IMG1 in the style of IMG2"
"""The release's instruction (the example its Jittor port calls officially supported; PAPER.md §7)."""
MAX_SEQUENCE_LENGTH = 128
"""T5 tokens of the instruction in the release (``max_sequence_length``)."""
CLIP_LENGTH = 77
HUB_ID = "black-forest-labs/FLUX.1-Kontext-dev"
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def _cache_dir() -> Path:
    root = os.environ.get("SXBENCH_CACHE")
    return Path(root).expanduser() / "prompts" if root else Path.home() / ".cache" / "sxbench" / "prompts"


def check_folder(flux: str | Path, parts: tuple[str, ...] = ("transformer", "vae", *TEXT_PARTS)) -> Path:
    """``flux`` as a Path, or ``FileNotFoundError`` naming the hub id and every missing part, on one line."""
    flux = Path(flux)
    missing = [p for p in parts if not (flux / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{flux}: not a FLUX.1-Kontext-dev diffusers folder (missing {', '.join(m + '/' for m in missing)}); "
                                f"download {HUB_ID} (huggingface-cli download {HUB_ID} --local-dir {flux}) and pass it")
    return flux


def folder_fingerprint(flux: str | Path) -> str:
    """A short fingerprint of a Kontext folder's weights without reading them: every file's relative path and size
    under ``transformer/``, ``vae/`` and the text parts (a method's parameter: other weights, other outputs)."""
    return files_fingerprint(flux, ("transformer", "vae", *TEXT_PARTS))[:16]


def preset_for_folder(flux: str | Path, *, resolution: int = 1024, steps: int = 28,
                      guidance: float | None = 3.5, siglip: str | Path | None = None) -> dict:
    """The ``full`` preset with the transformer and autoencoder sizes read from the folder's own configs (the real
    FLUX.1-Kontext-dev gives the ``full`` preset back; a tiny folder gives its tiny sizes), and the style
    backbone's from ``siglip``'s config when given; sampling at ``resolution`` with ``steps`` and ``guidance``."""
    import copy

    from styleexpert.presets import get_preset

    flux = check_folder(flux, ("transformer", "vae"))
    cfg = copy.deepcopy(get_preset("full"))
    tcfg = json.loads((flux / "transformer" / "config.json").read_text())
    cfg["transformer"] = {k: (list(tcfg[k]) if isinstance(tcfg.get(k), (list, tuple)) else tcfg.get(k, v))
                          for k, v in cfg["transformer"].items()}
    vcfg = json.loads((flux / "vae" / "config.json").read_text())
    cfg["latent"] = dict(cfg["latent"], latent_channels=vcfg["latent_channels"],
                         vae_scale=2 ** (len(vcfg["block_out_channels"]) - 1),
                         scaling_factor=vcfg.get("scaling_factor", 1.0), shift_factor=vcfg.get("shift_factor") or 0.0)
    if siglip is not None:
        scfg = json.loads((Path(siglip) / "config.json").read_text())
        scfg = scfg.get("vision_config", scfg)  # a whole SigLIP checkpoint or its vision tower
        cfg["encoder"]["backbone"] = {k: scfg.get(k, v) for k, v in cfg["encoder"]["backbone"].items()}
    cfg["name"] = f"kontext:{flux.name}"
    cfg["sampling"] = dict(cfg["sampling"], resolution=resolution, steps=steps, guidance=guidance)
    return cfg


@torch.no_grad()
def encode_instruction(flux: str | Path, prompt: str = INSTRUCTION, *, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       cache: bool = True) -> dict[str, torch.Tensor]:
    """The instruction as the Kontext pipeline encodes it (``FluxKontextPipeline.encode_prompt`` with
    ``prompt_2 = prompt``): T5's last hidden state over ``max_sequence_length`` padded tokens and CLIP's pooled
    output over 77. Cached on disk per folder, prompt and length; returned on CPU in float32."""
    from safetensors.torch import load_file, save

    flux = check_folder(flux, TEXT_PARTS)
    key = hashlib.sha256(json.dumps([files_fingerprint(flux, TEXT_PARTS, mtime=True), prompt, max_sequence_length]).encode()).hexdigest()[:32]
    path = _cache_dir() / f"{key}.safetensors"
    if cache and path.is_file():
        return load_file(str(path))
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    tok = CLIPTokenizer.from_pretrained(flux / "tokenizer")
    enc = CLIPTextModel.from_pretrained(flux / "text_encoder", torch_dtype=dtype).to(device).eval()
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    pooled = enc(ids.to(device), output_hidden_states=False).pooler_output[0].float().cpu()
    del enc
    tok2 = T5TokenizerFast.from_pretrained(flux / "tokenizer_2")
    enc2 = T5EncoderModel.from_pretrained(flux / "text_encoder_2", torch_dtype=dtype).to(device).eval()
    ids = tok2([prompt], padding="max_length", max_length=max_sequence_length, truncation=True,
               return_tensors="pt").input_ids
    seq = enc2(ids.to(device), output_hidden_states=False)[0][0].float().cpu()
    del enc2
    gc.collect()  # T5-XXL is gigabytes: gone before the transformer loads
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    out = {"prompt_embeds": seq.contiguous(), "pooled_prompt_embeds": pooled.contiguous()}
    if cache:
        from sxbench.runner import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(save(out)))
    return out


# ---------------------------------------------------------------------------------------- tiny folders
def _clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over lower-case letters and digits (no merges), written as vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_LENGTH)
    return tok


def _t5_tokenizer():
    """A T5 fast tokenizer (Unigram over letters and digits, SentencePiece-style metaspace), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    pieces += [("▁" + c, -1.5) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512), len(pieces)


def tiny_text_encoders(width: int = 32, seed: int = 0) -> dict[str, object]:
    """Kontext's four text parts at a tiny width, random: ``text_encoder`` (CLIP, pooled output of ``width``),
    ``tokenizer``, ``text_encoder_2`` (T5 encoder of ``d_model = width``), ``tokenizer_2``."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = _clip_tokenizer(Path(tmp))
    tok2, t5_vocab = _t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), hidden_size=width, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_LENGTH,
                                        projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1, feed_forward_proj="gated-gelu"))
    return {"text_encoder": clip, "tokenizer": tok, "text_encoder_2": t5, "tokenizer_2": tok2}


def write_tiny_text_encoders(flux: str | Path, width: int, seed: int = 0) -> Path:
    """Add ``tiny_text_encoders(width)`` to the folder ``flux`` in the pipeline's layout (for a tiny transformer
    of ``joint_attention_dim = pooled_projection_dim = width`` written elsewhere)."""
    flux = Path(flux)
    for name, part in tiny_text_encoders(width, seed).items():
        part.save_pretrained(flux / name)
    return flux


def write_tiny_kontext(root: str | Path, seed: int = 0) -> Path:
    """A FLUX.1-Kontext-dev diffusers folder of the real classes at tiny sizes (random weights): transformer of 1
    double and 1 single block (2 heads × 16), a 4-level VAE with 16 latent channels (×8 down, as Flux's), CLIP and
    T5 encoders of width 32. ``FluxKontextPipeline.from_pretrained(root)`` loads it; so does ``sxbench run``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    root = Path(root)
    text = tiny_text_encoders(32, seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, out_channels=64, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    FluxKontextPipeline(scheduler=scheduler, vae=vae, transformer=transformer, **text).save_pretrained(root)
    return root


def write_tiny_release(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The four parts ``styleexpert`` takes at full size, tiny and random, in the release's formats:
    ``flux`` (``root/FLUX.1-Kontext-dev``, ``write_tiny_kontext``), ``siglip`` (``root/siglip-so400m-patch14-384``,
    a ``SiglipVisionModel`` of width 16 with 20 layers, as many as the encoder reads, at 28² in patches of 14),
    ``adapters`` (``root/StyleExpert/weights/moe.safetensors``: experts of the release's key layout, random) and
    ``projector`` (``root/StyleExpert/weights/projector.safetensors``: the release's ``SigLIPMultiFeatProjModel``
    keys). Returns the four paths by parameter name."""
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from styleexpert import inject
    from styleexpert.io import RELEASED_KEYS, load_pretrained, release_projector_state_dict

    root = Path(root)
    flux = write_tiny_kontext(root / "FLUX.1-Kontext-dev", seed)
    siglip = root / "siglip-so400m-patch14-384"
    torch.manual_seed(seed)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=20,
                                         num_attention_heads=2, image_size=28, patch_size=14)).save_pretrained(siglip)
    cfg = preset_for_folder(flux, siglip=siglip)
    model = load_pretrained(cfg, "moe", flux=flux, siglip=siglip, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in inject.adapter_state_dict(model.transformer).values():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    weights = root / "StyleExpert" / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    released = {f"transformer.{name}.lora_layer.{leaf}": layer.lora_layer.get_parameter(leaf).detach().contiguous()
                for name, layer in inject.adapters(model.transformer).items() for leaf in RELEASED_KEYS}
    save_file(released, str(weights / "moe.safetensors"))
    projector = release_projector_state_dict(model.style_encoder.projector.state_dict(), cfg["encoder"]["layer_indices"])
    save_file({k: v.contiguous() for k, v in projector.items()}, str(weights / "projector.safetensors"))
    return {"flux": flux, "siglip": siglip, "adapters": weights / "moe.safetensors",
            "projector": weights / "projector.safetensors"}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("tiny", "tiny-release"):
        print("usage: python -m styleexpert.kontext tiny OUT           (a tiny random FLUX.1-Kontext folder of the "
              "real classes, for trying sxbench's Kontext methods on a CPU)\n"
              "       python -m styleexpert.kontext tiny-release OUT   (that folder, a tiny SigLIP and StyleExpert "
              "adapter and projector files in the release's formats: styleexpert's four full-size parts)",
              file=sys.stderr)
        return 2
    if args[0] == "tiny":
        print(write_tiny_kontext(args[1]))
    else:
        for k, v in write_tiny_release(args[1]).items():
            print(f"--param styleexpert.{k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
