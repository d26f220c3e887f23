"""Training: stage 0 (tiny base), stage 1 (style encoder head), stage 2 (adapters), and the ablations.

Data is a triplet folder with ``manifest.csv`` (columns ``content, style, target, split, level, family``,
paths relative to the folder), as written by ``sxbench data synth``; nothing here generates data.

Every stage is resumable and deterministic: the batch of step ``i`` and its noise depend only on
``(seed, i)``, and a state file (trainable tensors, optimizer moments, step, loss log, and the options that
shape the run) is written every ``checkpoint_every`` steps and at the end. A killed run started again with
the same command continues from its last state; started with other options it stops with an error naming
the state file; a finished stage is skipped.

Stages:

vae. tiny-v2 only: the autoencoder, on crops of the training images; then the latent normalisation.
0. tiny presets only: the base transformer learns to be an image-conditioned generator: half of the samples
   are reconstruction (target = content), half generic global edits (gain, gamma, saturation, channel mixing)
   shown in context by the reference (the same edit on another image; one fixed edit per content). Adapters
   are inert (B = 0).
1. the style projector by multi-positive InfoNCE on style-family labels (backbone frozen; its hidden
   states are computed once and cached).
2. base and encoder frozen; the adapters (``moe``, ``lora`` or ``noprior``) by flow matching on triplets.

The autoencoder and the style encoder are frozen from stage 0 on, so stages 0 and 2 encode every image once
(``latent_cache``, kept under ``out/cache``) and stage 2 embeds every reference once.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from styleexpert import inject
from styleexpert.encoder import PositivePairSampler, multi_positive_infonce
from styleexpert.io import (base_state_dict, load_base_weights, load_checkpoint, load_pretrained, load_projector,
                          save_checkpoint)
from styleexpert.moe import MoELoRAExperts
from styleexpert.pipeline import StyleExpert, build, latent_flow_matching_loss, make_vae

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Options shared by the stages (one flag each on the command line)."""

    out: Path
    """Training folder: stage outputs and resumable state live here."""
    data: Path
    """Triplet folder with manifest.csv."""
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    """Autocast matmuls to bfloat16 (GPU)."""
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    resolution: int | None = None
    """Training resolution; default the preset's sampling resolution."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Preset overrides (nested dict)."""
    progress: bool = True
    temperature: float = 0.07
    """InfoNCE τ (stage 1)."""
    timestep_sampling: str = "uniform"
    """``uniform`` σ ~ U(0, 1) (the tiny model samples in few steps and needs every σ), or
    ``logit_normal`` (SD3/Flux practice, for the full preset)."""
    flux: Path | None = None
    """Pretrained base instead of ``out/base`` (full preset): a diffusers FLUX.1-Kontext-dev folder."""
    siglip: Path | None = None
    """With ``flux``: the transformers folder of the style backbone."""
    prompt_embeds: Path | None = None
    """With ``flux``: safetensors of the encoded instruction (see ``styleexpert.io.load_pretrained``)."""
    rank: int = 0
    """This process's index under ``accelerate launch``/``torchrun`` (set by ``distributed``)."""
    world: int = 1
    """Number of processes; each draws its own ``batch_size`` samples and gradients are averaged."""
    weights_dir: Path | None = None
    """sxbench weights folder for a registry style backbone (tiny-v2: dinov2-s); default ``$SXBENCH_WEIGHTS``."""
    balance: float = 0.0
    """Weight of the load-balancing term on the routers (stage 2, ``moe``): 0, the paper's method, has none."""
    stop_at: int | None = None
    """Stop at this step with the resumable state saved (as a killed run would), for splitting a run; not the
    schedule (warm-up and the stage's length follow ``steps``)."""

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` for this process. Under ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1) this joins
    the process group through accelerate (NCCL on GPUs, gloo on CPUs) and places the process on its device;
    otherwise it returns ``cfg`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg
    from accelerate import PartialState

    state = PartialState(cpu=torch.device(cfg.device).type == "cpu")
    return dataclasses.replace(cfg, device=str(state.device), rank=state.process_index, world=state.num_processes)


def _barrier(cfg: TrainConfig) -> None:
    if cfg.world > 1:
        torch.distributed.barrier()


def _average_gradients(params: list[torch.nn.Parameter], world: int, bucket: int = 1 << 25) -> None:
    """All-reduce gradients in flat buckets of ``bucket`` elements (missing gradients count as zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    i = 0
    while i < len(params):
        group, n = [], 0
        while i < len(params) and (not group or n + params[i].numel() <= bucket):
            group.append(params[i].grad)
            n += params[i].numel()
            i += 1
        flat = torch.cat([g.reshape(-1) for g in group])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# --------------------------------------------------------------------------------------------- data
class TripletData:
    """All triplets of a folder in memory as uint8 ``(N, 3, H, W)`` tensors, with family labels."""

    def __init__(self, root: Path, resolution: int, split: str | None = "seen") -> None:
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(f"{root}: no manifest.csv; write training data with `sxbench data synth --out {root} --n N`")
        rows = list(csv.DictReader(manifest.open()))
        if split:
            rows = [r for r in rows if r.get("split", split) == split]
        if not rows:
            raise ValueError(f"{manifest}: no rows of split {split!r}")

        def load(rel: str) -> np.ndarray:
            im = Image.open(root / rel).convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            return np.asarray(im).transpose(2, 0, 1)

        self.content = torch.from_numpy(np.stack([load(r["content"]) for r in rows]))
        self.style = torch.from_numpy(np.stack([load(r["style"]) for r in rows]))
        self.target = torch.from_numpy(np.stack([load(r["target"]) for r in rows]))
        self.families = sorted({r["family"] for r in rows})
        self.labels = torch.tensor([self.families.index(r["family"]) for r in rows])

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def floats(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


def _generic_edit(x: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A random global photometric edit (the same function for the reference and the target)."""
    gain = 0.6 + 0.8 * torch.rand(3, generator=g)
    gamma = 0.6 + 0.9 * torch.rand(1, generator=g)
    sat = 1.6 * torch.rand(1, generator=g)
    mix = torch.eye(3) + 0.3 * torch.randn(3, 3, generator=g)

    def edit(img: torch.Tensor) -> torch.Tensor:
        y = img.clamp(0, 1) ** gamma
        grey = y.mean(1, keepdim=True)
        y = grey + sat * (y - grey)
        y = torch.einsum("ij,bjhw->bihw", mix, y) * gain.view(1, 3, 1, 1)
        return y.clamp(0, 1)

    return edit


# --------------------------------------------------------------------------------------- state I/O
KILL_AT_STEP_ENV = "SXBENCH_KILL_AT_STEP"
"""Test hook: a process with this variable set to ``N`` SIGKILLs itself right after writing the state of
step ``N``, so that tests interrupt training at a known point instead of racing a timer."""


def _warmup(cfg: TrainConfig) -> int:
    return max(1, min(100, cfg.steps // 10))


def _manifest_digest(data: Path) -> str:
    return hashlib.sha256((data / "manifest.csv").read_bytes()).hexdigest()[:16]


def resume_key(cfg: TrainConfig, model: StyleExpert | None, **stage: Any) -> dict[str, str]:
    """The options a resumed stage must share with the state it resumes: everything that changes its model,
    data, batches, noise, learning rates or numerics. ``model``'s resolved preset stands for ``--preset`` and
    its overrides (sizes, experts, rank, top-k); the data for the digest of its manifest; ``steps`` counts
    only through the warm-up it sets. ``checkpoint_every``, ``device`` and progress do not count. ``stage``
    adds the stage's own options."""
    model_key = {"model": json.dumps(model.config, sort_keys=True), "variant": model.variant} if model is not None else {}
    key = model_key | {"batch_size": cfg.batch_size,
           "lr": cfg.lr, "seed": cfg.seed, "warmup": _warmup(cfg), "bf16": cfg.bf16, "world": cfg.world,
           "data": _manifest_digest(cfg.data)} | stage
    return {k: str(v) for k, v in key.items()}


def _save_state(path: Path, step: int, params: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                history: list[dict[str, float]], options: dict[str, str]) -> None:
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in params.items()}
    names = list(params)
    for i, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            tensors[f"opt.{names[i]}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
    meta = {"step": step, "history": history, "param_groups": opt.state_dict()["param_groups"], "options": options}
    tmp = path.with_suffix(".safetensors.tmp")
    # step, loss log and tensors in one file replaced atomically: a kill can never pair them wrongly
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path.with_suffix(".safetensors"))


def _load_state(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                options: dict[str, str]) -> tuple[int, list]:
    file = path.with_suffix(".safetensors")
    if not file.is_file():
        return 0, []
    with safe_open(str(file), "pt") as f:
        header = f.metadata() or {}
    legacy = path.with_suffix(".json")  # states written before the loss log moved into the file
    meta = json.loads(header["state"] if "state" in header else legacy.read_text())
    trained = meta.get("options")
    if trained is None:  # written before the options were recorded
        log.warning("%s: records no training options; resuming it as if they were the same", file)
    elif trained != options:
        diff = {k: (trained.get(k), options.get(k)) for k in sorted(set(trained) | set(options))
                if trained.get(k) != options.get(k)}
        raise ValueError(f"{file}: a run with other options, (state, now): {diff}; pass the same options to resume "
                         f"it, or another --out (or delete {file.parent}) to start a new one")
    tensors = load_file(str(file))
    names = list(params)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            pname, _, sub = key[4:].rpartition(".")
            state.setdefault(names.index(pname), {})[sub] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["history"])


def _loop(cfg: TrainConfig, name: str, params: dict[str, torch.nn.Parameter],
          loss_fn: Callable[[int, torch.Generator], torch.Tensor], lr: float, options: dict[str, str]) -> bool:
    """The shared training loop: AdamW, linear warm-up, resumable state under ``out/<name>/state``.

    ``options`` (``resume_key``) are recorded in the state; resuming a state with other options raises.
    Returns whether the stage finished (False: stopped at ``cfg.stop_at``, its state saved).
    """
    from tqdm.auto import tqdm

    folder = cfg.out / name
    if cfg.main:
        folder.mkdir(parents=True, exist_ok=True)
    _barrier(cfg)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    state = folder / "state"
    step, history = _load_state(state, params, opt, options)
    if step:
        log.info("%s: resuming from step %d", name, step)
    warmup = _warmup(cfg)
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
    bar = tqdm(total=cfg.steps, initial=step, desc=name, disable=not cfg.progress or not cfg.main)
    t0 = time.perf_counter()
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + (cfg.rank << 40))
        with torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(step, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        if cfg.world > 1:
            _average_gradients(list(params.values()), cfg.world)
            torch.distributed.all_reduce(loss)
            loss /= cfg.world
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        step += 1
        history.append({"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - t0})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if (step % cfg.checkpoint_every == 0 or step in (cfg.steps, end)) and cfg.main:
            _save_state(state, step, params, opt, history, options)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # KILL_AT_STEP_ENV: a kill -9 right after this state
    bar.close()
    if step < cfg.steps:
        log.info("%s: stopped at step %d of %d; the same command without the stop resumes it", name, step, cfg.steps)
        _barrier(cfg)
        return False
    if cfg.main:
        config = {k: str(v) for k, v in asdict(cfg).items() if k != "stop_at"}
        record = {"stage": name, "config": config, "history": history}
        (folder / "train_log.json").write_text(json.dumps(record, indent=1))
    _barrier(cfg)
    return True


def _batch(data: TripletData, step: int, cfg: TrainConfig) -> np.ndarray:
    return _batch_of(len(data), step, cfg)


def _batch_of(n: int, step: int, cfg: TrainConfig) -> np.ndarray:
    """Indices of step ``step``'s batch among ``n`` items (a function of seed, step and rank only)."""
    key = (cfg.seed, step) if cfg.world == 1 else (cfg.seed, step, cfg.rank)
    return np.random.default_rng(key).choice(n, size=cfg.batch_size, replace=n < cfg.batch_size)


def _sigma(cfg: TrainConfig, g: torch.Generator) -> torch.Tensor | None:
    if cfg.timestep_sampling == "uniform":
        return torch.rand(cfg.batch_size, generator=g)
    if cfg.timestep_sampling == "logit_normal":
        return None  # flow_matching_loss's default
    raise ValueError(f"timestep_sampling must be uniform or logit_normal, got {cfg.timestep_sampling!r}")


def _resolution(cfg: TrainConfig, model_cfg: dict[str, Any]) -> int:
    return cfg.resolution or model_cfg["sampling"]["resolution"]


def _start(cfg: TrainConfig, variant: str, base: Path) -> StyleExpert:
    """The model a stage starts from: fresh ``variant`` adapters on the base (``cfg.flux``'s pretrained parts,
    or the stage-0 checkpoint ``base``), with the base's backbone and instruction embedding."""
    if cfg.flux is not None:
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        return load_pretrained(_preset(cfg), variant, flux=cfg.flux, siglip=cfg.siglip, prompt_embeds=cfg.prompt_embeds,
                               dtype=dtype, seed=cfg.seed + 1).to(cfg.device)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base}: no base checkpoint; run `sxbench train 0 --out {cfg.out}` first, "
                                "or give pretrained weights with --flux/--siglip/--prompt-embeds")
    base_model = load_checkpoint(base, weights_root=cfg.weights_dir)
    model = build(base_model.config, variant, seed=cfg.seed + 1)
    load_base_weights(model, base_state_dict(base_model))
    with torch.no_grad():
        model.prompt_embeds.copy_(base_model.prompt_embeds)
        model.pooled_prompt_embeds.copy_(base_model.pooled_prompt_embeds)
        if model.vae is not None:
            model.vae.load_state_dict(base_model.vae.state_dict())
        if model.style_encoder is not None:
            model.style_encoder.backbone.load_state_dict(base_model.style_encoder.backbone.state_dict())
            if hasattr(base_model.style_encoder, "backbone_sha256"):
                model.style_encoder.backbone_sha256 = base_model.style_encoder.backbone_sha256
    return model.to(cfg.device)


def _preset(cfg: TrainConfig) -> dict[str, Any]:
    from styleexpert.presets import get_preset

    return get_preset(cfg.preset, cfg.overrides)


def training_record(data: Path, model_resolution: int) -> dict[str, Any] | None:
    """The data folder's ``training_data.json`` (``sxbench.protocols.splits.TrainingRecord``, written by
    ``sxbench data synth``) with the resolution the model saw the images at; None for a folder without one."""
    from sxbench.protocols.splits import TrainingRecord
    from sxbench.protocols.synth import TRAINING_RECORD

    path = data / TRAINING_RECORD
    if not path.is_file():
        return None
    record = TrainingRecord.from_json(json.loads(path.read_text()))
    return (record.to_json() | {"model_resolution": model_resolution, "benchmark_input": "resize"})


def checkpoint_record(folder: Path) -> dict[str, Any] | None:
    """The ``training_data`` of a checkpoint folder in the current ``TrainingRecord`` form (fields added since
    filled in); None when the folder has no config or the config no record."""
    from sxbench.protocols.splits import TrainingRecord

    if not (folder / "config.json").is_file():
        return None
    record = json.loads((folder / "config.json").read_text()).get("training_data")
    return TrainingRecord.from_json(record).to_json() if record else None


def copy_image_digests(record: dict[str, Any] | None, src: Path, dest: Path) -> None:
    """Copy the image-digest file ``record`` names from folder ``src`` to folder ``dest`` (nothing without one)."""
    if record and record.get("image_digests"):
        (dest / record["image_digests"]).write_bytes((src / record["image_digests"]).read_bytes())


def _finish(cfg: TrainConfig, model: StyleExpert, done: Path, metadata: dict[str, Any],
            resolution: int | None = None) -> Path:
    if cfg.main:
        record = training_record(cfg.data, resolution) if resolution else None
        extra = {"training_data": record} if record else {}
        save_checkpoint(model, done, metadata=metadata | extra | {"world_size": cfg.world})
        copy_image_digests(record, cfg.data, done)
    _barrier(cfg)
    return done


# ----------------------------------------------------------------------------------- latent caches
def _encode_all(model: StyleExpert, images: torch.Tensor, cfg: TrainConfig, desc: str) -> torch.Tensor:
    """``model.encode`` of uint8 ``(N, 3, H, W)`` images in chunks, without gradients, on the CPU afterwards."""
    from tqdm.auto import tqdm

    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), 32), desc=desc, disable=not cfg.progress or not cfg.main, leave=False):
            out.append(model.encode(TripletData.floats(images[i:i + 32]).to(cfg.device)).float().cpu())
    return torch.cat(out)


def _edit_pairs(data: TripletData, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 0's generic edits, one per content ``i`` (a fixed function of ``(seed, i)``): the reference is the
    edit applied to content ``i + 1``, the target the same edit applied to content ``i``; uint8."""
    refs, targets = [], []
    n = len(data)
    for i in range(n):
        edit = _generic_edit(data.floats(data.content[i:i + 1]), torch.Generator().manual_seed(seed * 1_000_003 + i))
        refs.append(edit(data.floats(data.content[(i + 1) % n:(i + 1) % n + 1])))
        targets.append(edit(data.floats(data.content[i:i + 1])))

    def u8(x: list[torch.Tensor]) -> torch.Tensor:
        return (torch.cat(x) * 255).round().to(torch.uint8)

    return u8(refs), u8(targets)


def latent_cache(cfg: TrainConfig, model: StyleExpert, data: TripletData, *, edits: bool = False) -> dict[str, torch.Tensor]:
    """``content``, ``style``, ``target`` latents of every triplet (and, with ``edits``, ``edit_ref`` and
    ``edit_target``), encoded once and kept in ``out/cache`` under a key of what determines them (autoencoder
    weights and normalisation, data, resolution, seed), so that a resumed or later stage reuses them."""
    h = hashlib.sha256(json.dumps(model.config["latent"], sort_keys=True).encode())
    h.update(_manifest_digest(cfg.data).encode())
    h.update(f"{tuple(data.content.shape)}:{cfg.seed}".encode())
    if model.vae is not None:
        for k, v in sorted(model.vae.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    folder = cfg.out / "cache"
    with_edits = folder / f"latents-{h.hexdigest()[:16]}-edits.safetensors"
    file = with_edits if edits else folder / f"latents-{h.hexdigest()[:16]}.safetensors"
    for f in dict.fromkeys((file, with_edits)):  # stage 0's cache (with its edits) serves stage 2 too
        if f.is_file():
            return load_file(str(f))
    log.info("encoding %d triplets%s into latents (once; cached in %s)", len(data), " and edits" if edits else "", file)
    lat = {k: _encode_all(model, getattr(data, k), cfg, f"latents ({k})") for k in ("content", "style", "target")}
    if edits:
        ref, tgt = _edit_pairs(data, cfg.seed)
        lat["edit_ref"] = _encode_all(model, ref, cfg, "latents (edit references)")
        lat["edit_target"] = _encode_all(model, tgt, cfg, "latents (edit targets)")
    if cfg.main:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in lat.items()}, str(tmp))
        tmp.replace(file)
    return lat


# ------------------------------------------------------------------------------------------ stages
VAE_CROP = 64
"""The autoencoder trains on random crops of this size (it is convolutional; 128² images cost 4× as much)."""
VAE_KL_WEIGHT = 1e-6


def stage_vae(cfg: TrainConfig) -> Path | None:
    """tiny-v2: train the preset's autoencoder on crops of the training triplets' images (contents, references
    and targets: L1 + a small KL term), then set the latent normalisation (``shift_factor`` = mean,
    ``scaling_factor`` = 1 / std of the training latents, as the Flux VAE's constants are). Writes ``out/vae``
    (``vae.safetensors`` and ``latent.json``); stage 0 builds the base on it."""
    from styleexpert.presets import get_preset

    done = cfg.out / "vae"
    if (done / "latent.json").is_file():
        log.info("autoencoder already trained: %s", done)
        return done
    cfg = distributed(cfg)
    preset = get_preset(cfg.preset, cfg.overrides)
    if not preset["latent"]["vae"]:
        raise ValueError(f"preset {cfg.preset!r} has no autoencoder to train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = make_vae(preset["latent"]).to(cfg.device)
    data_res = _resolution(cfg, preset)
    data = TripletData(cfg.data, data_res, split=None)
    pool = torch.cat([data.content, data.style, data.target])
    params = dict(vae.named_parameters())

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        idx = _batch_of(len(pool), step, cfg)
        ys = torch.randint(0, data_res - VAE_CROP + 1, (len(idx),), generator=g)
        xs = torch.randint(0, data_res - VAE_CROP + 1, (len(idx),), generator=g)
        crops = torch.stack([pool[i, :, y:y + VAE_CROP, x:x + VAE_CROP] for i, y, x in zip(idx, ys.tolist(), xs.tolist())])
        x = (TripletData.floats(crops) * 2 - 1).to(cfg.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(cfg.device)
        rec = vae.decode(z).sample
        return (rec - x).abs().mean() + VAE_KL_WEIGHT * post.kl().mean()

    options = resume_key(cfg, None, resolution=data_res, crop=VAE_CROP, kl=VAE_KL_WEIGHT,
                         vae=json.dumps(preset["latent"], sort_keys=True))
    if not _loop(cfg, "vae-train", params, loss_fn, cfg.lr, options):
        return None
    vae.requires_grad_(False).eval()
    # normalisation from the latents of (up to) 512 training images at the model's resolution
    sample = pool[np.random.default_rng(cfg.seed).choice(len(pool), size=min(512, len(pool)), replace=False)]
    with torch.no_grad():
        lat = torch.cat([vae.encode((TripletData.floats(sample[i:i + 32]) * 2 - 1).to(cfg.device)).latent_dist.mode().cpu()
                         for i in range(0, len(sample), 32)])
    shift, scale = float(lat.mean()), float(1.0 / lat.std())
    if cfg.main:
        done.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}, str(done / "vae.safetensors"))
        (done / "latent.json").write_text(json.dumps({"shift_factor": shift, "scaling_factor": scale}, indent=1))
    _barrier(cfg)
    return done


def stage0(cfg: TrainConfig) -> Path | None:
    """Pretrain the tiny base transformer; writes ``out/base`` (a checkpoint with base weights, and the
    autoencoder of ``out/vae`` for a preset with one).

    Returns ``out/base``, or None when stopped early at ``cfg.stop_at`` (likewise for the other stages)."""
    done = cfg.out / "base"
    if (done / "config.json").is_file():
        log.info("stage 0 already done: %s", done)
        return done
    cfg = distributed(cfg)
    overrides = dict(cfg.overrides)
    if _preset(cfg)["latent"]["vae"]:
        vae_dir = cfg.out / "vae"
        if not (vae_dir / "latent.json").is_file():
            raise FileNotFoundError(f"{vae_dir}: no trained autoencoder; run `sxbench train vae --out {cfg.out}` first")
        norm = json.loads((vae_dir / "latent.json").read_text())
        overrides["latent"] = {**overrides.get("latent", {}), **norm}
    model = build(cfg.preset, "moe", overrides=overrides, seed=cfg.seed).to(cfg.device)
    if model.vae is not None:
        model.vae.load_state_dict(load_file(str(cfg.out / "vae" / "vae.safetensors")))
        model.vae.requires_grad_(False).eval()
    if model.style_encoder is not None and "registry" in model.config["encoder"]["backbone"]:
        from styleexpert.io import load_registry_backbone

        load_registry_backbone(model, cfg.weights_dir)
    if cfg.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    data_res = _resolution(cfg, model.config)
    data = TripletData(cfg.data, data_res, split=None)
    lat = latent_cache(cfg, model, data, edits=True)
    adapter_ids = {id(p) for p in inject.adapter_parameters(model.transformer)}
    for p in inject.adapter_parameters(model.transformer):
        p.requires_grad_(False)  # inert (B = 0) during stage 0
    params = {n: p for n, p in model.transformer.named_parameters() if id(p) not in adapter_ids}
    for p in params.values():
        p.requires_grad_(True)
    params["prompt_embeds"], params["pooled_prompt_embeds"] = model.prompt_embeds, model.pooled_prompt_embeds
    model.prompt_embeds.requires_grad_(True)
    model.pooled_prompt_embeds.requires_grad_(True)

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.from_numpy(_batch(data, step, cfg))
        content = lat["content"][idx]
        if step % 2 == 0:  # reconstruction: copy the content whatever the reference
            ref, target = lat["style"][idx], content
        else:  # a generic global edit, shown in context on another image
            ref, target = lat["edit_ref"][idx], lat["edit_target"][idx]
        dev = cfg.device
        # the adapters are inert (B = 0) whatever routes them: a zero condition spares the style encoder
        inject.set_style_condition(model.transformer, torch.zeros(len(idx), model.style_encoder.embedding_dim, device=dev))
        return latent_flow_matching_loss(model, content.to(dev), ref.to(dev), target.to(dev), g, sigma=_sigma(cfg, g))

    options = resume_key(cfg, model, resolution=data_res, timesteps=cfg.timestep_sampling, cache="latent-v1")
    if not _loop(cfg, "stage0", params, loss_fn, cfg.lr, options):
        return None
    for p in params.values():
        p.requires_grad_(False)
    return _finish(cfg, model, done, {"stage": 0}, data_res)


def stage1(cfg: TrainConfig, base: Path) -> Path | None:
    """Train the style projector by InfoNCE on family labels; writes ``out/encoder`` (a checkpoint)."""
    done = cfg.out / "encoder"
    if (done / "config.json").is_file():
        log.info("stage 1 already done: %s", done)
        return done
    cfg = distributed(cfg)
    # tiny: the stage-0 checkpoint itself (its backbone, and its projector as the starting point)
    model = _start(cfg, "moe", base) if cfg.flux is not None else load_checkpoint(base, device=cfg.device,
                                                                                  weights_root=cfg.weights_dir)
    enc = model.style_encoder
    data_res = _resolution(cfg, model.config)
    data = TripletData(cfg.data, data_res, split="seen")
    # both the references and the targets show their family's style; cache the frozen backbone once
    images = torch.cat([data.style, data.target])
    labels = torch.cat([data.labels, data.labels])
    cached: list[list[torch.Tensor]] = []
    for i in range(0, len(images), 64):
        hs = enc.hidden_states(data.floats(images[i:i + 64]).to(cfg.device))
        cached.append(hs)
    hidden = [torch.cat([c[j] for c in cached]) for j in range(len(cached[0]))]
    sampler = PositivePairSampler(labels.numpy(), cfg.batch_size, seed=cfg.seed)
    params = dict(enc.projector.named_parameters())
    for p in params.values():
        p.requires_grad_(True)

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        sampler.rng = np.random.default_rng((cfg.seed, step) if cfg.world == 1 else (cfg.seed, step, cfg.rank))
        a, b = sampler.sample()
        e = enc.embed([h[a] for h in hidden])
        e2 = enc.embed([h[b] for h in hidden])
        return multi_positive_infonce(e, e2, labels[a], labels[b], cfg.temperature)

    options = resume_key(cfg, model, resolution=data_res, temperature=cfg.temperature)
    if not _loop(cfg, "stage1", params, loss_fn, cfg.lr, options):
        return None
    enc.projector.requires_grad_(False)
    return _finish(cfg, model, done, {"stage": 1, "families": data.families}, data_res)


def load_balancing_loss(model: StyleExpert, embedding: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balancing over the batch, averaged over the mixture layers:
    ``E · Σ_i f_i · P_i`` (``f_i``: fraction of the top-k slots routed to expert ``i``, ``P_i``: its mean router
    probability); 1 when routing is uniform, ``E / k`` when every sample picks the same ``k`` experts."""
    terms = []
    for m in model.transformer.modules():
        if isinstance(m, MoELoRAExperts):
            logits = m.cond_gate(embedding.to(m.cond_gate.weight.dtype)).float()
            probs = torch.softmax(logits, dim=-1)
            picked = torch.zeros_like(probs).scatter_(1, logits.topk(m.top_k, dim=-1).indices, 1.0)
            terms.append(m.num_experts * (picked.mean(0) / m.top_k * probs.mean(0)).sum())
    return torch.stack(terms).mean()


def stage2(cfg: TrainConfig, variant: str, base: Path, encoder: Path | None) -> Path | None:
    """Train the adapters of ``variant`` on triplets; writes ``out/<variant>`` (the method's checkpoint), or
    ``out/moe-balance`` for ``moe`` with a load-balancing term (``cfg.balance``).

    ``moe`` uses the stage-1 encoder; ``noprior`` keeps the encoder as built (untrained projector, same
    backbone); ``lora`` has no router. The base and the encoder are frozen, so latents and style embeddings
    are computed once.
    """
    if variant != "moe":
        cfg = dataclasses.replace(cfg, balance=0.0)  # the ablations as the paper trains them
    name = variant + ("-balance" if cfg.balance else "")
    done = cfg.out / name
    if (done / "config.json").is_file():
        log.info("stage 2 (%s) already done: %s", name, done)
        return done
    cfg = distributed(cfg)
    model = _start(cfg, variant, base)
    if variant == "moe":
        if encoder is None or not (encoder / "encoder.safetensors").is_file():
            raise FileNotFoundError(f"{encoder}: stage 2 moe needs the stage-1 encoder; run `sxbench train 1` first")
        model.style_encoder.projector.load_state_dict(load_projector(encoder))
    if cfg.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    data_res = _resolution(cfg, model.config)
    data = TripletData(cfg.data, data_res, split="seen")
    lat = latent_cache(cfg, model, data)
    emb = None
    if model.style_encoder is not None:
        with torch.no_grad():
            emb = torch.cat([model.style_embedding(data.floats(data.style[i:i + 64]).to(cfg.device)).cpu()
                             for i in range(0, len(data), 64)])
    params = {n: p for n, p in model.transformer.named_parameters() if p.requires_grad}

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.from_numpy(_batch(data, step, cfg))
        dev = cfg.device
        cond = emb[idx].to(dev) if emb is not None else None
        inject.set_style_condition(model.transformer, cond)
        loss = latent_flow_matching_loss(model, lat["content"][idx].to(dev), lat["style"][idx].to(dev),
                                         lat["target"][idx].to(dev), g, sigma=_sigma(cfg, g))
        if cfg.balance:
            loss = loss + cfg.balance * load_balancing_loss(model, cond)
        return loss

    extra = {"balance": cfg.balance} if cfg.balance else {}
    options = resume_key(cfg, model, resolution=data_res, timesteps=cfg.timestep_sampling, cache="latent-v1", **extra)
    if not _loop(cfg, f"stage2-{name}", params, loss_fn, cfg.lr, options):
        return None
    inject.set_style_condition(model.transformer, None)
    return _finish(cfg, model, done, {"stage": 2} | extra, data_res)
