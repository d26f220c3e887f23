"""Weights I/O: our checkpoints (a folder of safetensors plus ``config.json``) and the released formats.

Checkpoint folder::

    config.json            {"format": "styleexpert", "version": 1, "variant": ..., "preset": {...}, "released_compat": ...}
    transformer.safetensors   base transformer weights (tiny preset: our own trained base; full: omitted, the
                              base comes from Flux.1-Kontext-dev)
    adapters.safetensors      experts, shared experts and routers, or the single LoRA (released key names)
    encoder.safetensors       style projector (and, tiny preset, the backbone under ``backbone.``; tiny-v2's
                              backbone is the registry's DINOv2-S, loaded from the weights folder)
    vae.safetensors           tiny-v2: the autoencoder, beside the base transformer
    prompt.safetensors        the fixed instruction embedding

Nothing here unpickles: safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from styleexpert import inject
from styleexpert.moe import MoELoRALinear
from styleexpert.pipeline import StyleExpert, build

FORMAT_VERSION = 1


def _is_adapter_key(key: str) -> bool:
    return ".lora_layer." in key or key.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def base_state_dict(model: StyleExpert) -> dict[str, torch.Tensor]:
    """Transformer weights without adapter tensors, with wrapped layers under their original names."""
    return {k.replace(".base.", "."): v for k, v in model.transformer.state_dict().items() if not _is_adapter_key(k)}


def save_checkpoint(model: StyleExpert, path: str | Path, *, include_base: bool | None = None,
                    base_ref: str | None = None, metadata: dict[str, Any] | None = None,
                    storage_dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created).

    ``include_base`` defaults to True for the tiny presets. ``base_ref`` (a folder path relative to ``path``)
    instead points at another checkpoint's ``transformer.safetensors``, so that several methods share one base.
    ``storage_dtype`` (e.g. ``torch.float16``, half the bytes) stores floating-point tensors in that type; loading
    casts them back to the model's dtype, so the loaded model is the stored one, not the one saved.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    include_base = (model.config["name"] != "full" and base_ref is None) if include_base is None else include_base
    compat = any(isinstance(m, MoELoRALinear) and m.released_compat for m in inject.adapters(model.transformer).values())

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        def cast(v: torch.Tensor) -> torch.Tensor:
            return v.to(storage_dtype) if storage_dtype is not None and v.is_floating_point() else v

        save_file({k: cast(v.detach()).contiguous().cpu() for k, v in tensors.items()}, str(path / name))

    save(inject.adapter_state_dict(model.transformer), "adapters.safetensors")
    if include_base:
        save(base_state_dict(model), "transformer.safetensors")
        if model.vae is not None:
            save(model.vae.state_dict(), "vae.safetensors")
    if model.style_encoder is not None:
        enc = {f"projector.{k}": v for k, v in model.style_encoder.projector.state_dict().items()}
        if model.config["name"] != "full" and "registry" not in model.config["encoder"]["backbone"]:
            enc |= {f"backbone.{k}": v for k, v in model.style_encoder.backbone.state_dict().items()}
        save(enc, "encoder.safetensors")
    save({"prompt_embeds": model.prompt_embeds, "pooled_prompt_embeds": model.pooled_prompt_embeds}, "prompt.safetensors")
    meta = {"format": "styleexpert", "version": FORMAT_VERSION, "variant": model.variant, "preset": model.config,
            "released_compat": compat, "includes_base": include_base, "base_ref": base_ref,
            **({"storage_dtype": str(storage_dtype).removeprefix("torch.")} if storage_dtype is not None else {})} \
        | (metadata or {})
    (path / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder, with a clear error when it is not one."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: not a StyleExpert checkpoint (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != "styleexpert":
        raise ValueError(f"{cfg_path}: format {cfg.get('format')!r} is not 'styleexpert'")
    return cfg


def load_registry_backbone(model: StyleExpert, weights_root: str | Path | None = None) -> str:
    """Load the style backbone a preset takes from the sxbench weights registry (``tiny-v2``: ``dinov2-s``) into
    ``model`` and return the sha256 of the file loaded (checked against the registry first).

    Raises ``sxbench.weights.WeightsMissingError`` naming the fetch command when the weights are not there.
    """
    from sxbench import weights

    name = model.config["encoder"]["backbone"]["registry"]
    file, digest = weights.check(name, Path(weights_root) if weights_root else None)
    model.style_encoder.backbone.load_state_dict(load_file(str(file)), strict=True)
    model.style_encoder.backbone_sha256 = digest
    return digest


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    base_transformer: str | Path | None = None, weights_root: str | Path | None = None) -> StyleExpert:
    """Rebuild the model from ``path`` and load every tensor strictly (bit-exact round trip).

    For checkpoints without base weights (full preset), ``base_transformer`` is a safetensors file or folder
    of the Flux.1-Kontext-dev transformer. A preset whose style backbone comes from the weights registry
    (``tiny-v2``) loads it from ``weights_root`` (default: ``$SXBENCH_WEIGHTS``, see ``sxbench weights``).
    """
    path = Path(path)
    cfg = read_config(path)
    model = build(cfg["preset"], cfg["variant"], released_compat=cfg.get("released_compat", False))
    base_dir = path if cfg.get("includes_base") else (path / cfg["base_ref"] if cfg.get("base_ref") else None)
    if cfg.get("includes_base"):
        load_base_weights(model, load_file(str(path / "transformer.safetensors")))
    elif cfg.get("base_ref"):
        base_file = path / cfg["base_ref"] / "transformer.safetensors"
        if not base_file.is_file():
            raise FileNotFoundError(f"{path}: its base {base_file} is missing; copy the whole checkpoints folder")
        load_base_weights(model, load_file(str(base_file)))
    elif base_transformer is not None:
        load_base_weights(model, _read_tensors(Path(base_transformer)))
    else:
        raise FileNotFoundError(
            f"{path}: the checkpoint holds adapters only; pass the Flux.1-Kontext-dev transformer weights "
            "(base_transformer=... / --base PATH), downloaded from black-forest-labs/FLUX.1-Kontext-dev"
        )
    if model.vae is not None and base_dir is not None and (base_dir / "vae.safetensors").is_file():
        model.vae.load_state_dict(load_file(str(base_dir / "vae.safetensors")))
    elif model.vae is not None and cfg["preset"]["name"] != "full":
        raise FileNotFoundError(f"{path}: no vae.safetensors beside its base weights; copy the whole checkpoints folder")
    _load_adapters(model, load_file(str(path / "adapters.safetensors")))
    if model.style_encoder is not None and (path / "encoder.safetensors").is_file():
        enc = load_file(str(path / "encoder.safetensors"))
        model.style_encoder.projector.load_state_dict({k[10:]: v for k, v in enc.items() if k.startswith("projector.")})
        bb = {k[9:]: v for k, v in enc.items() if k.startswith("backbone.")}
        if bb:
            model.style_encoder.backbone.load_state_dict(bb)
    if model.style_encoder is not None and "registry" in model.config["encoder"]["backbone"]:
        load_registry_backbone(model, weights_root)
    prompt = load_file(str(path / "prompt.safetensors"))
    with torch.no_grad():
        model.prompt_embeds.copy_(prompt["prompt_embeds"])
        model.pooled_prompt_embeds.copy_(prompt["pooled_prompt_embeds"])
    return model.to(device=device, dtype=dtype)


def load_pretrained(preset: str | dict[str, Any], variant: str, *, flux: str | Path, siglip: str | Path | None,
                    prompt_embeds: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> StyleExpert:
    """A StyleExpert on pretrained parts, with fresh adapters: the starting point of stages 1–2 of the full preset.

    Args:
        flux: a diffusers folder of FLUX.1-Kontext-dev (``transformer/`` and, when the preset has a VAE,
            ``vae/``), i.e. ``huggingface-cli download black-forest-labs/FLUX.1-Kontext-dev``.
        siglip: a transformers folder of the style backbone (``google/siglip-so400m-patch14-384``); not
            needed for the ``lora`` variant, which has no router.
        prompt_embeds: safetensors with ``prompt_embeds`` ``(T, joint_attention_dim)`` and
            ``pooled_prompt_embeds`` ``(pooled_projection_dim,)``: the fixed instruction encoded once by the
            Kontext pipeline's T5/CLIP (``FluxKontextPipeline.encode_prompt``). ``None`` (the default): encoded
            here from ``flux``'s own text encoders (``styleexpert.kontext.encode_instruction``, cached per prompt).
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import SiglipVisionModel

    from styleexpert.presets import get_preset

    cfg = get_preset(preset) if isinstance(preset, str) else preset
    flux = Path(flux)

    def need(path: Path, what: str, hub: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing {what}; download {hub} and pass its local folder")
        return path

    tdir = flux / "transformer" if (flux / "transformer").is_dir() else flux
    parts: dict[str, Any] = {"transformer": FluxTransformer2DModel.from_pretrained(
        need(tdir, "the Flux.1-Kontext transformer", "black-forest-labs/FLUX.1-Kontext-dev"), torch_dtype=dtype)}
    got = dict(parts["transformer"].config)
    diff = {k: (v, got.get(k)) for k, v in cfg["transformer"].items() if k != "out_channels" and got.get(k) != v}
    if diff:
        raise ValueError(f"{tdir}: transformer config differs from preset {cfg['name']!r} (preset, file): {diff}")
    if cfg["latent"]["vae"]:
        parts["vae"] = AutoencoderKL.from_pretrained(need(flux / "vae", "the Flux VAE",
                                                          "black-forest-labs/FLUX.1-Kontext-dev"), torch_dtype=dtype)
    if variant != "lora":
        if siglip is None:
            raise ValueError(f"variant {variant!r} needs the style backbone (siglip=...)")
        parts["backbone"] = SiglipVisionModel.from_pretrained(
            need(Path(siglip), "the SigLIP vision backbone", "google/siglip-so400m-patch14-384"), torch_dtype=dtype)
    if prompt_embeds is None:
        from styleexpert.kontext import encode_instruction

        prompt = encode_instruction(flux)
    else:
        prompt = load_file(str(need(Path(prompt_embeds), "the instruction embedding",
                                    "(or leave --prompt-embeds out: the folder's text encoders encode it)")))
    if {"prompt_embeds", "pooled_prompt_embeds"} - set(prompt):
        raise ValueError(f"{prompt_embeds}: needs tensors 'prompt_embeds' and 'pooled_prompt_embeds', has {sorted(prompt)}")
    cfg = dict(cfg, prompt=dict(cfg["prompt"], tokens=int(prompt["prompt_embeds"].shape[0])))
    parts |= {k: prompt[k].to(dtype) for k in ("prompt_embeds", "pooled_prompt_embeds")}
    return build(cfg, variant, seed=seed, dtype=dtype, components=parts)


def load_projector(path: str | Path) -> dict[str, torch.Tensor]:
    """The style projector's state dict from a checkpoint folder (without building its model)."""
    enc = load_file(str(Path(path) / "encoder.safetensors"))
    return {k.removeprefix("projector."): v for k, v in enc.items() if k.startswith("projector.")}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors files")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out |= load_file(str(f))
    return out


def load_base_weights(model: StyleExpert, state: dict[str, torch.Tensor]) -> None:
    """Load transformer weights keyed by the original (unwrapped) module names into a wrapped model."""
    wrapped = set(inject.adapters(model.transformer))
    mapped = {}
    for k, v in state.items():
        mod, _, leaf = k.rpartition(".")
        mapped[f"{mod}.base.{leaf}" if mod in wrapped else k] = v
    own = {k for k in model.transformer.state_dict() if not _is_adapter_key(k)}
    missing, unexpected = own - set(mapped), set(mapped) - own
    if missing or unexpected:
        raise ValueError(f"base transformer weights do not match the preset: {len(missing)} missing "
                         f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    model.transformer.load_state_dict(mapped, strict=False)


def _load_adapters(model: StyleExpert, state: dict[str, torch.Tensor]) -> None:
    own = inject.adapter_state_dict(model.transformer)
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise ValueError(f"adapter weights do not match: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    params = dict(model.transformer.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


# --------------------------------------------------------------------------------- released formats
RELEASED_KEYS = ("loraA", "loraB", "shared_A", "shared_B", "cond_gate.weight")


def load_released_adapters(model: StyleExpert, path: str | Path) -> list[str]:
    """Load the authors' MoE checkpoint (keys ``[transformer.]<module path>.lora_layer.<loraA|loraB|shared_A|
    shared_B|cond_gate.weight>``) into a ``moe`` model, switching its layers to ``released_compat``.

    The module paths in the file decide which layers are wrapped (the release's ``lora_modules.csv``); layers
    of ours that the file lacks are unwrapped back to their base linear. Returns the loaded module paths.
    """
    if model.variant == "lora":
        raise ValueError("released MoE adapters load into a 'moe' or 'noprior' model, not 'lora'")
    state = load_file(str(path))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        k = k.removeprefix("transformer.")
        mod, sep, leaf = k.partition(".lora_layer.")
        if not sep or leaf not in RELEASED_KEYS:
            raise ValueError(f"{path}: unexpected key {k!r}; expected <module>.lora_layer.<{'|'.join(RELEASED_KEYS)}>")
        modules.setdefault(mod, {})[leaf] = v
    ours = inject.adapters(model.transformer)
    unknown = set(modules) - set(ours)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} module(s) not wrapped in this model, e.g. {sorted(unknown)[:3]}")
    for name, layer in ours.items():
        if name not in modules:
            inject._replace(model.transformer, name, layer.base)
    with torch.no_grad():
        for name, tensors in modules.items():
            layer = ours[name]
            if set(tensors) != set(RELEASED_KEYS):
                raise ValueError(f"{path}: {name} lacks {sorted(set(RELEASED_KEYS) - set(tensors))}")
            for leaf, v in tensors.items():
                target = layer.lora_layer.get_parameter(leaf)
                if target.shape != v.shape:
                    raise ValueError(f"{path}: {name}.{leaf} has shape {tuple(v.shape)}, model expects {tuple(target.shape)}")
                target.copy_(v)
            layer.released_compat = True
    return sorted(modules)


def released_projector_state_dict(state: dict[str, torch.Tensor], layer_indices: list[int]) -> dict[str, torch.Tensor]:
    """Map the release's ``SigLIPMultiFeatProjModel`` keys (``[proj_model.]embedding_linears.<idx>.0.*``,
    ``layer_norms.<idx>.*``, ``projections.<idx>.*``) onto ``StyleProjector`` keys."""
    out = {}
    names = {"embedding_linears": "token_mix", "layer_norms": "norm", "projections": "proj"}
    for k, v in state.items():
        k = k.removeprefix("proj_model.")
        group, idx, rest = k.split(".", 2)
        if group not in names:
            raise ValueError(f"unexpected projector key {k!r}")
        if group == "embedding_linears":
            rest = rest.removeprefix("0.")
        out[f"{names[group]}.{layer_indices.index(int(idx))}.{rest}"] = v
    return out


def release_projector_state_dict(state: dict[str, torch.Tensor], layer_indices: list[int]) -> dict[str, torch.Tensor]:
    """``StyleProjector`` keys in the release's ``SigLIPMultiFeatProjModel`` layout (with its ``proj_model.``
    prefix): the inverse of ``released_projector_state_dict``, for writing files in the release's format."""
    names = {"token_mix": "embedding_linears", "norm": "layer_norms", "proj": "projections"}
    out = {}
    for k, v in state.items():
        group, i, rest = k.split(".", 2)
        rest = f"0.{rest}" if group == "token_mix" else rest
        out[f"proj_model.{names[group]}.{layer_indices[int(i)]}.{rest}"] = v
    return out
