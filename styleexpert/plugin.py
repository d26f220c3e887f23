"""The sxbench plugin: StyleExpert and its two ablations as ``sxbench`` methods.

This is the only module of ``styleexpert`` that imports ``sxbench``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from sxbench.imageio import resize_to, to_tensor
from sxbench.interfaces import Method, Routing

CHECKPOINT_DIR_ENV = "SXBENCH_STYLEEXPERT_CHECKPOINTS"
PACKAGED = Path(__file__).parent / "checkpoints"


def find_checkpoint(name: str, checkpoint: str | os.PathLike | None) -> Path:
    """A checkpoint folder: ``checkpoint`` if given, else ``$SXBENCH_STYLEEXPERT_CHECKPOINTS/<name>``, else the
    one shipped in the package (``styleexpert/checkpoints/<name>``)."""
    if checkpoint is not None:
        candidates = [Path(checkpoint)]
    else:
        candidates = ([Path(os.environ[CHECKPOINT_DIR_ENV]) / name] if os.environ.get(CHECKPOINT_DIR_ENV) else []) + [PACKAGED / name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name}: no checkpoint at {where}; put a folder written by styleexpert.io.save_checkpoint "
        f"(config.json + safetensors) there, or pass --param {name}.checkpoint=PATH"
    )


class StyleExpertMethod(Method):
    """StyleExpert: a style-routed mixture of LoRA experts in a Flux-Kontext transformer."""

    name = "styleexpert"
    variant = "moe"
    version = "1"
    licence = "code: Apache-2.0 (this implementation; the authors' inference code is not used); weights: trained here"
    reference = "Zhu et al., Mixture of Style Experts for Diverse Image Stylization, CVPR 2026 (arXiv 2603.16649)"
    deterministic = False
    takes_weights_dir = True
    """tiny-v2 checkpoints route with the registry's DINOv2-S (``sxbench weights fetch dinov2-s``)."""

    def __init__(self, *, device: str | torch.device = "cpu", checkpoint: str | None = None, steps: int | None = None,
                 guidance: float | None = None, weights_dir: str | None = None, flux: str | None = None,
                 siglip: str | None = None, adapters: str | None = None, projector: str | None = None,
                 resolution: int = 1024, dtype: str = "auto", offload: str = "none") -> None:
        from styleexpert.io import load_checkpoint, read_config
        from styleexpert.pipeline import StyleExpertPipeline

        from sxbench.folders import check_offload

        self._routing: Routing | None = None
        check_offload(offload, f"{self.name}.offload", ("none", "model"))
        if flux is not None:  # full size: FLUX.1-Kontext-dev + SigLIP folders and the adapter/projector files
            self._init_full(device, flux, siglip, adapters, projector, steps, guidance, resolution, dtype)
            _offload(self, offload)
            return
        path = find_checkpoint(self.name, checkpoint)
        reproduce = read_config(path).get("command")
        self.model = load_checkpoint(path, device=device, weights_root=weights_dir)
        if self.model.variant != self.variant:
            raise ValueError(f"{path}: holds a {self.model.variant!r} model, {self.name} needs {self.variant!r}")
        self.pipe = StyleExpertPipeline(self.model)
        sampling = self.model.config["sampling"]
        # the registry backbone is part of what determines the outputs (other weights: another configuration)
        backbone = getattr(self.model.style_encoder, "backbone_sha256", None)
        super().__init__(device=device, steps=steps or sampling["steps"],
                         guidance=guidance if guidance is not None else sampling.get("guidance"),
                         weights_sha256=_digest(path / "adapters.safetensors"),
                         **({"backbone_sha256": backbone} if backbone else {}))
        # where the weights live is not what they are: a moved clone keeps its stored outputs
        self.provenance = {"checkpoint": str(path), **({"reproduce": reproduce} if reproduce else {})}
        _offload(self, offload)

    def _init_full(self, device: str | torch.device, flux: str, siglip: str | None, adapters: str | None,
                   projector: str | None, steps: int | None, guidance: float | None, resolution: int,
                   dtype: str) -> None:
        """The model from the release's parts: ``flux`` (a diffusers folder of FLUX.1-Kontext-dev; its text
        encoders encode the instruction, cached), ``siglip`` (google/siglip-so400m-patch14-384), ``adapters``
        (the release's MoE file, keys ``[transformer.]<module>.lora_layer.<loraA|loraB|shared_A|shared_B|
        cond_gate.weight>``, weighed as the release does; or ``adapters.safetensors`` of a checkpoint of ours,
        told apart by its folder's ``config.json``) and ``projector`` (the release's
        ``SigLIPMultiFeatProjModel`` file or our ``encoder.safetensors``; detected). Release defaults: 1024²,
        28 steps, guidance 3.5, bf16 on CUDA."""
        import json

        from safetensors.torch import load_file

        from sxbench.folders import files_fingerprint, torch_dtype

        from styleexpert.io import _load_adapters, load_pretrained, load_released_adapters, released_projector_state_dict
        from styleexpert.kontext import check_folder, folder_fingerprint, preset_for_folder
        from styleexpert.pipeline import StyleExpertPipeline

        folder = check_folder(flux)
        needs = {"adapters": adapters} | ({} if self.variant == "lora" else {"siglip": siglip, "projector": projector})
        missing = [k for k, v in needs.items() if v is None]
        if missing:
            raise ValueError(f"{self.name} with flux= also needs {', '.join(f'--param {self.name}.{k}=PATH' for k in missing)}"
                             " (siglip: google/siglip-so400m-patch14-384; adapters, projector: the release's "
                             "HH-LG/StyleExpert weights/ files or a checkpoint of ours)")
        dev = torch.device(device)
        dt = torch_dtype(dtype, dev, f"{self.name}.dtype")
        cfg = preset_for_folder(folder, resolution=resolution, steps=steps or 28,
                                guidance=3.5 if guidance is None else guidance, siglip=siglip)
        model = load_pretrained(cfg, self.variant, flux=folder, siglip=siglip, dtype=dt)
        # the two formats share key names; ours lives in a checkpoint folder whose config.json says how it weighs
        # its experts, any other file is the release's (its weighting: released_compat)
        ours = Path(adapters).parent / "config.json"
        meta = json.loads(ours.read_text()) if ours.is_file() else {}
        released = meta.get("format") != "styleexpert" or bool(meta.get("released_compat"))
        if released and self.variant != "lora":
            load_released_adapters(model, adapters)
        else:
            _load_adapters(model, {k: v.to(dt) for k, v in load_file(str(adapters)).items()})
        digests = {"adapters_sha256": _digest(Path(adapters))}
        if projector is not None:
            pstate = load_file(str(projector))
            if any(k.startswith(("proj_model.", "embedding_linears.")) for k in pstate):
                pstate = released_projector_state_dict(pstate, cfg["encoder"]["layer_indices"])
            else:
                pstate = {k.removeprefix("projector."): v for k, v in pstate.items() if k.startswith("projector.")}
            model.style_encoder.projector.load_state_dict({k: v.to(dt) for k, v in pstate.items()})
            digests["projector_sha256"] = _digest(Path(projector))
        self.model = model.to(dev).eval()
        self.pipe = StyleExpertPipeline(self.model)
        sampling = cfg["sampling"]
        Method.__init__(self, device=dev, steps=sampling["steps"], guidance=sampling["guidance"],
                        resolution=resolution, dtype=str(dt).removeprefix("torch."),
                        released_adapters=released, flux=folder_fingerprint(folder),
                        **({"siglip": files_fingerprint(siglip)[:16]} if siglip else {}), **digests)
        self.licence = ("code: Apache-2.0 (this implementation); weights: FLUX.1 [dev] Non-Commercial License (the "
                        "base), Apache-2.0 (SigLIP), and the adapters' own: " + ("the release's (HH-LG/StyleExpert)"
                                                                                 if released else "a checkpoint of ours"))
        self.provenance = {"flux": str(folder), **({"siglip": str(siglip)} if siglip else {}), "adapters": str(adapters),
                           **({"projector": str(projector)} if projector else {})}

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        out, images = sample(self.pipe, self.model.config["sampling"]["resolution"], contents, styles, seeds,
                             self.params["steps"], self.params["guidance"])
        if out.routing:
            self._routing = Routing({k: v.indices.cpu() for k, v in out.routing.items()},
                                    {k: v.weights.cpu() for k, v in out.routing.items()},
                                    self.model.config["moe"]["num_experts"])
        return images

    def routing(self) -> Routing | None:
        return self._routing

    @classmethod
    def inspect(cls, preset: str = "full") -> list[str]:
        """Lines describing the model at ``preset`` size, built on the meta device."""
        from styleexpert.stats import format_stats, summarize

        return format_stats(summarize(preset))


class StyleExpertLoRA(StyleExpertMethod):
    """Ablation: one LoRA of rank E·r in every wrapped linear, no router."""

    name = "styleexpert-lora"
    variant = "lora"


class StyleExpertNoPrior(StyleExpertMethod):
    """Ablation: the mixture, routed by a style encoder whose projector was never trained."""

    name = "styleexpert-noprior"
    variant = "noprior"


def sample(pipe: Any, res: int, contents: Sequence[Image.Image], styles: Sequence[Image.Image], seeds: Sequence[int],
           steps: int, guidance: float | None) -> tuple[Any, list[torch.Tensor]]:
    """Contents and styles resized to the model's ``res``, sampled by ``pipe`` (a ``StyleExpertPipeline``), the
    outputs resized back to the contents' size: ``(pipeline output, images)``."""
    size = contents[0].size

    def prep(images: Sequence[Image.Image]) -> torch.Tensor:
        return to_tensor([im.resize((res, res), Image.Resampling.LANCZOS) if im.size != (res, res) else im
                          for im in images])

    out = pipe(prep(contents), prep(styles), seeds=seeds, num_inference_steps=steps, guidance_scale=guidance)
    return out, list(resize_to(out.images, *size).float().cpu())


class FluxKontext(Method):
    """FLUX.1-Kontext-dev with no adapters, in StyleExpert's two-image Kontext layout and instruction."""

    name = "flux-kontext"
    version = "1"
    reference = ("Black Forest Labs, FLUX.1 Kontext (2025), black-forest-labs/FLUX.1-Kontext-dev; sampled as "
                 "StyleExpert samples (content and style as Kontext context images, the release's instruction) "
                 "with no experts: the paper's no-adapter point")
    licence = "code: Apache-2.0 (this implementation, diffusers' FluxTransformer2DModel); weights: FLUX.1 [dev] Non-Commercial License"
    deterministic = False
    requires = ("path",)
    """Parameters without a default: ``path``, a diffusers folder of FLUX.1-Kontext-dev."""

    def __init__(self, *, device: str | torch.device = "cpu", path: str | None = None, steps: int = 28,
                 guidance: float = 3.5, resolution: int = 1024, dtype: str = "auto", offload: str = "none") -> None:
        from sxbench import folders

        from styleexpert.io import load_pretrained
        from styleexpert.kontext import HUB_ID, check_folder, folder_fingerprint, preset_for_folder
        from styleexpert.pipeline import StyleExpertPipeline

        folders.check_offload(offload, f"{self.name}.offload", ("none", "model"))
        folders.check_folder(path, (), hub_id=HUB_ID, what=self.name)  # no path: one line naming the download
        folder = check_folder(path)
        dev = torch.device(device)
        dt = folders.torch_dtype(dtype, dev, f"{self.name}.dtype")
        cfg = preset_for_folder(folder, resolution=resolution, steps=steps, guidance=guidance)
        self.model = load_pretrained(cfg, "lora", flux=folder, siglip=None, dtype=dt)  # B = 0: no delta
        self.model.to(dev).eval()
        self.pipe = StyleExpertPipeline(self.model)
        super().__init__(device=dev, steps=steps, guidance=guidance, resolution=resolution,
                         dtype=str(dt).removeprefix("torch."), weights=folder_fingerprint(folder))
        self.provenance = {"path": str(folder)}
        _offload(self, offload)

    @torch.no_grad()
    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        return sample(self.pipe, self.params["resolution"], contents, styles, seeds, self.params["steps"],
                      self.params["guidance"])[1]


def _offload(method: Any, offload: str) -> None:
    """``offload=model``: the pipeline keeps each component on the CPU until its stage runs (provenance: where
    weights live does not change the outputs)."""
    if offload == "model":
        method.pipe.enable_model_cpu_offload(method.device)
        method.provenance["offload"] = offload


def _digest(path: Path) -> str:
    from sxbench.weights import sha256

    return sha256(path)


__all__: list[Any] = ["FluxKontext", "StyleExpertLoRA", "StyleExpertMethod", "StyleExpertNoPrior", "find_checkpoint"]


# ------------------------------------------------------------------------------------ sxbench train
STAGE2_METHODS = {"moe": "styleexpert", "lora": "styleexpert-lora", "noprior": "styleexpert-noprior"}
REPRODUCE = "sxbench train all --preset tiny-v2 --out runs/styleexpert-tiny-v2 --batch-size 16 --steps2 1000 --install"
"""The one command that reproduces the committed tiny checkpoints."""


def add_train_command(subparsers: Any) -> None:
    """Register ``sxbench train`` (entry point ``sxbench.commands``)."""
    import argparse

    t = subparsers.add_parser("train", help="train StyleExpert: vae (tiny-v2's autoencoder), stage 0 (tiny base), 1 "
                                            "(encoder), 2 (adapters), or all; or the adain baseline's decoder")
    t.add_argument("stage", choices=("vae", "0", "1", "2", "all", "adain"))
    t.add_argument("--out", default=None,
                   help="training folder (resumable state lives here); default runs/styleexpert-tiny, runs/adain")
    t.add_argument("--data", default=None, help="triplet folder with manifest.csv (default OUT/data, generated if missing)")
    t.add_argument("--n-data", type=int, default=3000, help="triplets to generate when --data is absent")
    t.add_argument("--preset", default="tiny", choices=("tiny", "tiny-v2", "full"),
                   help="tiny: 4×4 pixel patches (fast); tiny-v2: its own autoencoder and DINOv2-S routing (the "
                        "committed models); full: FLUX.1-Kontext-dev")
    t.add_argument("--variant", default="moe", choices=tuple(STAGE2_METHODS), help="stage 2 variant")
    t.add_argument("--steps", type=int, default=None, help="steps of the chosen stage (all: see --steps0/1/2)")
    t.add_argument("--steps-vae", type=int, default=1500)
    t.add_argument("--steps0", type=int, default=2000)
    t.add_argument("--steps1", type=int, default=400)
    t.add_argument("--steps2", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=None, help="default: 1e-3 (tiny), 1e-4 (full, stage 2), 1e-5 (full, stage 1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--resolution", type=int, default=None, help="the model's training resolution (default the preset's)")
    t.add_argument("--data-resolution", type=int, default=None,
                   help="resolution the generated triplets are rendered at (default 128, the synth protocol's)")
    t.add_argument("--balance", type=float, default=0.0,
                   help="stage 2 (moe): weight of a load-balancing term on the routers (0: the paper's method); "
                        "writes OUT/moe-balance")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--flux", default=None, metavar="DIR",
                   help="stages 1-2 on a pretrained base (full preset): local diffusers folder of "
                        "black-forest-labs/FLUX.1-Kontext-dev (instead of OUT/base from stage 0)")
    t.add_argument("--siglip", default=None, metavar="DIR",
                   help="with --flux: local folder of google/siglip-so400m-patch14-384 (the style backbone)")
    t.add_argument("--prompt-embeds", default=None, metavar="FILE",
                   help="with --flux: safetensors with prompt_embeds and pooled_prompt_embeds of the instruction "
                        "(default: encoded from the folder's own CLIP and T5, cached per prompt)")
    t.add_argument("--install", action="store_true",
                   help="copy the stage-2 results to styleexpert/checkpoints (the methods' default), base shared")
    t.add_argument("--no-progress", action="store_true")
    # for tests and split runs: stop each stage at this step with its resumable state saved, as a kill would
    t.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)
    a = t.add_argument_group("adain (the baseline's decoder; see baselines/adain.py)")
    a.add_argument("--layer", default=None, choices=("relu3_1", "relu4_1"), help="encoder layer (default: the config's)")
    a.add_argument("--style-weight", type=float, default=None)
    t.add_argument("--weights-dir", default=None,
                   help="sxbench weights folder (tiny-v2: dinov2-s; adain: vgg19); default $SXBENCH_WEIGHTS")
    t.set_defaults(fn=_cmd_train)


def _cmd_train(args: Any) -> int:
    import dataclasses
    import time

    if args.stage == "adain":
        return _cmd_train_adain(args)
    from styleexpert import train

    out = Path(args.out or "runs/styleexpert-tiny")
    data = Path(args.data) if args.data else out / "data"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # accelerate launch / torchrun
    if not (data / "manifest.csv").is_file():
        if args.data or launched:
            raise FileNotFoundError(f"{data}: no manifest.csv; write one with `sxbench data synth --out {data} --n N`")
        from sxbench.protocols.synth import write_triplets

        # rendered at the benchmark's resolution (synth: 128) and resized on the way in as the plugin resizes the
        # benchmark's images, so that pixel-scale style parameters mean the same at the model's input
        res = args.data_resolution or (1024 if args.preset == "full" else 128)
        print(f"generating {args.n_data} training triplets (seen split, {res} px) in {data}")
        write_triplets(data, args.n_data, "seen", resolution=res, seed=1000 + args.seed, progress=not args.no_progress)
    full = args.preset == "full"
    base = train.TrainConfig(out=out, data=data, preset=args.preset, batch_size=args.batch_size, seed=args.seed,
                             device=args.device, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
                             checkpoint_every=args.checkpoint_every, resolution=args.resolution,
                             progress=not args.no_progress, stop_at=args.stop_at,
                             timestep_sampling="uniform" if args.preset == "tiny" else "logit_normal",
                             flux=_path(args.flux), siglip=_path(args.siglip), prompt_embeds=_path(args.prompt_embeds),
                             weights_dir=_path(args.weights_dir), balance=args.balance)

    def cfg(stage: int) -> "train.TrainConfig":
        """Stage ``stage``'s options (-1: the autoencoder)."""
        chosen = args.steps is not None and args.stage != "all"
        steps = args.steps if chosen else {-1: args.steps_vae, 0: args.steps0, 1: args.steps1, 2: args.steps2}[stage]
        lr = args.lr if args.lr is not None else (1e-3 if not full else (1e-5 if stage == 1 else 1e-4))
        return dataclasses.replace(base, steps=steps, lr=lr if stage >= 0 or args.lr is not None else 5e-4)

    t0 = time.perf_counter()
    if (full or args.flux) and args.stage in ("vae", "0", "all"):
        raise ValueError("stage 0 is for the tiny preset; with a pretrained base (--flux) run stages 1 and 2")
    if full and not args.flux:
        raise ValueError("the full preset trains on FLUX.1-Kontext-dev: pass --flux DIR --siglip DIR")
    base_ckpt = out / "base"

    def stopped(result: Path | None) -> bool:
        if result is None:
            print(f"stopped at step {args.stop_at} (--stop-at); run the command without it to continue")
        return result is None

    from styleexpert.presets import get_preset

    if args.stage == "vae" or (args.stage == "all" and get_preset(args.preset)["latent"]["vae"]):
        if stopped(train.stage_vae(cfg(-1))):
            return 0
    if args.stage in ("0", "all"):
        base_ckpt = train.stage0(cfg(0))
        if stopped(base_ckpt):
            return 0
    if args.stage in ("1", "all") and stopped(train.stage1(cfg(1), base_ckpt)):
        return 0
    variants = tuple(STAGE2_METHODS) if args.stage == "all" else ((args.variant,) if args.stage == "2" else ())
    for v in variants:
        if stopped(train.stage2(cfg(2), v, base_ckpt, out / "encoder")):
            return 0
    if args.install and int(os.environ.get("RANK", "0")) == 0:
        installed = install_checkpoints(out, variants or tuple(STAGE2_METHODS))
        for p in installed:
            print(f"installed {p}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _cmd_train_adain(args: Any) -> int:
    import dataclasses
    import time

    from baselines import adain

    cfg = adain.TrainConfig(out=Path(args.out or "runs/adain"), seed=args.seed, device=args.device,
                            batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                            progress=not args.no_progress, weights_dir=args.weights_dir)
    changes = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("resolution", args.resolution),
                                 ("layer", args.layer), ("style_weight", args.style_weight)) if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    t0 = time.perf_counter()
    folder = adain.train(cfg)
    print(f"decoder written to {folder}")
    if args.install:
        print(f"installed {adain.install(folder)}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def install_checkpoints(out: Path, variants: Sequence[str], dest: Path = PACKAGED) -> list[Path]:
    """Copy trained stage-2 checkpoints into ``dest``, sharing one base (``dest/tiny-base``) and stored in
    float16 to stay small (the methods run the stored weights, cast back to float32)."""
    from styleexpert.io import load_checkpoint, save_checkpoint
    from styleexpert.train import checkpoint_record, copy_image_digests

    written = []
    base_saved = False
    for v in variants:
        model = load_checkpoint(out / v)
        if not base_saved:
            base_meta = {"role": "shared base of the tiny methods", "command": REPRODUCE}
            base_record = checkpoint_record(out / "base")
            if base_record:
                base_meta["training_data"] = base_record
            written.append(save_checkpoint(model, dest / "tiny-base", include_base=True, metadata=base_meta,
                                           storage_dtype=torch.float16))
            copy_image_digests(base_record, out / "base", dest / "tiny-base")
            base_saved = True
        meta = {"command": REPRODUCE, "train_log": f"{out / ('stage2-' + v)}/train_log.json"}
        record = checkpoint_record(out / v)
        if record:  # what the adapters were trained on (the split and leakage tests read it)
            meta["training_data"] = record
        written.append(save_checkpoint(model, dest / STAGE2_METHODS[v], include_base=False, base_ref="../tiny-base",
                                       metadata=meta, storage_dtype=torch.float16))
        copy_image_digests(record, out / v, dest / STAGE2_METHODS[v])
        # the paper's method carries its whole lineage's loss logs (the report plots them): autoencoder, base, encoder
        lineage = ("vae-train", "stage0", "stage1", f"stage2-{v}") if v == "moe" else (f"stage2-{v}",)
        for log_name in lineage:
            src = out / log_name / "train_log.json"
            if src.is_file():
                (dest / STAGE2_METHODS[v] / f"{log_name}.json").write_text(src.read_text())
    return written
