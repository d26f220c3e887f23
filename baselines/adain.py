"""``adain``: arbitrary style transfer by adaptive instance normalisation (Huang & Belongie, ICCV 2017).

The content's VGG-19 features take the channel-wise mean and standard deviation of the style's, and a decoder
maps them back to an image: ``out = g((1 − α)·f(c) + α·AdaIN(f(c), f(s)))``.

The encoder is the registry VGG-19 (``sxbench weights fetch vgg19``), normalised as Gatys et al.'s (each
filter divided by its mean activation on photos, measured at the start of training and stored with the
decoder). The decoder is trained here by ``sxbench train adain`` with the paper's losses (content loss on the
encoder layer against the AdaIN target, style loss on the means and standard deviations of the layers up to
it) and shipped in ``baselines/checkpoints/adain`` (fp16 safetensors plus ``config.json`` with the command
that reproduces it).

Where this departs from the paper, to train within 30 minutes on a 2-core CPU (the paper: 160k iterations at
512² on a GPU): the default encoder layer is ``relu3_1`` (``relu4_1``, the paper's, is ``--layer relu4_1``),
training runs at 64² for 1200 steps, the decoder has half the paper's channels and ends in a sigmoid, and
style weight λ = 2 (paper: 10). Two additions make so short a run train at all: a warm-up of 400 steps that
teaches the decoder to invert the encoder (pixel L1 plus the feature loss at the encoder layer; without it the
AdaIN losses alone left a decoder that put out a flat pinkish wash after 1000 steps), and that reconstruction
loss kept at weight 1 during the AdaIN phase (as SANet's identity loss: α = 0 gives the content back), with the
gradient norm clipped at 1.

Training data: crops of the scikit-image photographs that no protocol evaluates on (``photos`` leaves out its 13
pictures, their near-duplicates and any file with the same bytes; 11 remain, mostly grey-scale) and of synth
scenes and seen-split styles rendered at the synth protocol's 128² and cropped to 64² without resizing, every
parameter within ``splits.training_ranges()``. ``config.json`` records both (``training_data``) and
``image_digests.txt`` a pixel digest of every training image; ``tests/test_splits.py`` and
``tests/test_leakage.py`` check them against every protocol's styles and images.

So short a training leaves a weak decoder: blurry, with little of the style's fine texture, and colours that
stay too close to the content's. The last costs the most (the style's colours are the most visible part of the
paper's results), so by default (``colour="style"``) the decoded image is given the style's Lab mean and
standard deviation, with strength α (Reinhard et al.'s transfer, as ``reinhard`` does; Gatys et al. 2017
control colour the same way, in the other direction). ``colour="decoder"`` keeps the decoder's own colours, as
the paper does. On the synth protocol's 224 pairs (``benchmarks/neural_baselines.md``), ``style_gram`` texture / material /
stroke with ``colour=style``: 0.513 / 0.339 / 1.247 (``reinhard``: 0.559 / 0.389 / 1.242; no paired difference
excludes 0). The previous decoder, trained on the photos protocol's own pictures, had 0.371 / 0.203 / 0.618
(``colour=decoder`` 0.607 / 0.276 / 0.819): the advantage came from those textures as training styles. Training
longer or weighting colour more did not close that decoder's colour gap (600 more steps: 0.601; also ``relu1_1``
×10 in the style loss: 0.577; also a Lab mean/std loss on the output: 0.577).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from baselines.reinhard import reinhard_tensor
from sxbench.imageio import to_tensor
from sxbench.interfaces import Method
from sxbench.protocols.synth import IMAGE_DIGESTS as DIGESTS

logger = logging.getLogger(__name__)

ENCODER_LAYER = "relu4_1"
"""The paper's encoder layer; ``relu3_1`` (a shallower encoder, easier to invert) is the other choice."""
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CHECKPOINT_ENV = "SXBENCH_ADAIN_CHECKPOINT"
PACKAGED = Path(__file__).parent / "checkpoints" / "adain"
LAYER_CHANNELS = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512}
REPRODUCE = "sxbench train adain --out runs/adain --install"
"""The command that reproduces the committed decoder."""
COLOURS = ("style", "decoder")
"""``style``: the decoded image takes the style's Lab mean and standard deviation (``reinhard``'s transfer,
with strength α); ``decoder``: the decoder's own colours, as in the paper."""


# ------------------------------------------------------------------------------------------- model
def mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise mean and standard deviation over space, ``(B, C, 1, 1)`` each."""
    flat = feat.flatten(2)
    return flat.mean(2)[..., None, None], (flat.var(2, unbiased=False) + eps).sqrt()[..., None, None]


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Content features renormalised to the style features' channel statistics."""
    mc, sc = mean_std(content)
    ms, ss = mean_std(style)
    return (content - mc) / sc * ss + ms


class Decoder(nn.Module):
    """The AdaIN decoder (mirror of VGG-19 up to ``layer``, nearest upsampling, reflection padding) with
    ``width`` times the paper's channels. A final sigmoid keeps RGB in ``[0, 1]``: without it the decoder
    meets the normalised VGG's statistics with negative pixels, which clamping then turns dark."""

    def __init__(self, width: float = 0.5, layer: str = ENCODER_LAYER) -> None:
        super().__init__()
        if layer not in ("relu3_1", "relu4_1"):
            raise ValueError(f"adain: encoder layer must be relu3_1 or relu4_1, not {layer!r}")
        self.layer = layer
        self.style_layers = STYLE_LAYERS[: STYLE_LAYERS.index(layer) + 1]
        for name in self.style_layers:  # per-filter mean activations: the "normalised VGG"
            self.register_buffer(f"scale_{name}", torch.ones(LAYER_CHANNELS[name]))
        c4, c3, c2, c1 = (max(8, int(round(c * width))) for c in (256, 256, 128, 64))
        plan: list[tuple[int, int] | str] = [
            (512, c4), "up", (c4, c3), (c3, c3), (c3, c3), (c3, c2), "up", (c2, c2), (c2, c1), "up", (c1, c1),
        ] if layer == "relu4_1" else [(256, c2), "up", (c2, c2), (c2, c1), "up", (c1, c1)]
        layers: list[nn.Module] = []
        for p in plan:
            if p == "up":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(p[0], p[1], 3), nn.ReLU()]
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(c1, 3, 3), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.width = width

    def set_scales(self, scales: dict[str, torch.Tensor]) -> None:
        for k, v in scales.items():
            getattr(self, f"scale_{k}").copy_(v)

    def normalise(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """VGG activations divided by each filter's mean activation on photos (Gatys et al.'s normalised
        VGG, which AdaIN's encoder is): every layer then weighs alike in the losses."""
        return {k: v / getattr(self, f"scale_{k}").view(1, -1, 1, 1) for k, v in feats.items()}

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Normalised ``relu4_1`` features → RGB."""
        return self.net(feat)


def load_decoder(path: Path, device: str | torch.device = "cpu") -> tuple[Decoder, dict[str, Any]]:
    """A decoder folder (``config.json`` + ``decoder.safetensors``) → float32 decoder and its config."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "config.json").read_text())
    dec = Decoder(cfg.get("width", 0.5), cfg.get("layer", ENCODER_LAYER))
    dec.load_state_dict({k: v.float() for k, v in load_file(str(path / "decoder.safetensors")).items()})
    return dec.to(device).eval().requires_grad_(False), cfg


def save_decoder(dec: Decoder, path: Path, meta: dict[str, Any], *, half: bool = True) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if half else v).contiguous().cpu() for k, v in dec.state_dict().items()}
    tmp = path / "decoder.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt", "dtype": "float16" if half else "float32"})
    os.replace(tmp, path / "decoder.safetensors")
    (path / "config.json").write_text(json.dumps({"width": dec.width, "layer": dec.layer, **meta}, indent=1, default=str))
    return path


def find_decoder(checkpoint: str | os.PathLike | None) -> Path:
    """``checkpoint``, else ``$SXBENCH_ADAIN_CHECKPOINT``, else the packaged decoder."""
    candidates = [Path(checkpoint)] if checkpoint else (
        [Path(os.environ[CHECKPOINT_ENV])] if os.environ.get(CHECKPOINT_ENV) else []) + [PACKAGED]
    for c in candidates:
        if (c / "decoder.safetensors").is_file() and (c / "config.json").is_file():
            return c
    raise FileNotFoundError(
        f"adain: no decoder at {' or '.join(map(str, candidates))}; train one with `{REPRODUCE}` "
        "or pass --param adain.checkpoint=DIR (a folder with config.json and decoder.safetensors)"
    )


def _encoder(device: str | torch.device, weights_dir: str | os.PathLike | None):
    from sxbench.weights import load_extractor

    return load_extractor("vgg19", device, Path(weights_dir) if weights_dir else None)


# ------------------------------------------------------------------------------------------ method
class AdaIN(Method):
    name = "adain"
    takes_weights_dir = True
    reference = "Huang & Belongie, Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization, ICCV 2017"
    licence = "code: Apache-2.0 (this project); encoder: VGG-19 CC BY 4.0 (registry, 8-bit); decoder: trained here"

    def __init__(self, *, device: str | torch.device = "cpu", alpha: float = 1.0, colour: str = "style",
                 checkpoint: str | None = None, weights_dir: str | None = None) -> None:
        from sxbench.weights import sha256

        if colour not in COLOURS:
            raise ValueError(f"adain: colour must be one of {', '.join(COLOURS)}, not {colour!r}")
        self.vgg = _encoder(device, weights_dir)
        path = find_decoder(checkpoint)
        self.decoder, cfg = load_decoder(path, device)
        super().__init__(device=device, alpha=float(alpha), colour=colour,
                         weights_sha256=sha256(path / "decoder.safetensors"), encoder_sha256=self.vgg.weights_sha256)
        # where the decoder lives is not what it is: a moved clone keeps its stored outputs
        self.provenance = {"checkpoint": str(path), **({"reproduce": cfg["command"]} if "command" in cfg else {})}

    @torch.no_grad()
    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[torch.Tensor]:
        a = self.params["alpha"]
        c = to_tensor(list(contents)).to(self.device)
        enc = self.decoder.normalise
        layer = self.decoder.layer
        fc = enc(self.vgg.layers(c, (layer,), resize=False))[layer]
        outs, style_px = [], []
        for i, s in enumerate(styles):  # styles may differ in size: statistics per style image
            style_px.append(to_tensor([s]).to(self.device))
            fs = enc(self.vgg.layers(style_px[-1], (layer,), resize=False))[layer]
            t = adain(fc[i : i + 1], fs)
            outs.append(self.decoder(a * t + (1 - a) * fc[i : i + 1]))
        out = torch.cat(outs)
        if out.shape[-2:] != c.shape[-2:]:  # sizes not divisible by 8
            out = F.interpolate(out, size=c.shape[-2:], mode="bilinear", align_corners=False)
        out = list(out.clamp(0, 1).float().cpu())
        if self.params["colour"] == "style":  # the style's Lab mean and std, by as much as the style is applied
            out = [reinhard_tensor(o, st[0], a) for o, st in zip(out, style_px)]
        return out


# ---------------------------------------------------------------------------------------- training
SYNTH_RENDER = 128
"""Side the synth training images are rendered at: the synth protocol's, so that a 64² crop (taken without
resizing) shows every pixel-scale style parameter as the benchmark's images do at the model's input."""
@dataclass
class TrainConfig:
    out: Path
    steps: int = 1200
    """All steps, the reconstruction warm-up's included."""
    warmup_steps: int = 400
    """Steps that train the decoder to invert the encoder (pixel L1 + feature loss) before the AdaIN losses."""
    batch_size: int = 8
    resolution: int = 64
    warmup_lr: float = 1e-3
    lr: float = 2e-4
    """Peak learning rate of the AdaIN phase (cosine decay to 0 over it)."""
    style_weight: float = 2.0
    identity_weight: float = 1.0
    """Weight of the reconstruction loss kept during the AdaIN phase (decoding the content's own features
    gives the content back: α = 0 stays the identity)."""
    grad_clip: float = 1.0
    width: float = 0.5
    layer: str = "relu3_1"
    n_synth_contents: int = 600
    n_synth_styles: int = 600
    photo_fraction: float = 0.5
    """Share of contents drawn from the photographs (the rest: synth scenes)."""
    photo_style_fraction: float = 0.25
    """Share of styles drawn from the photographs (the rest: seen-split synth styles)."""
    synth_render: int = SYNTH_RENDER
    """Side the synth images are rendered at (crops of ``resolution`` are taken without resizing); the split holds
    only at the synth protocol's own 128²."""
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    progress: bool = True
    weights_dir: str | None = None
    stop_at: int | None = None
    """Stop at this step with the state saved (as a killed run would), for splitting a run; not the schedule."""


DATA_VERSION = "2"
"""Version of the training data (2: no photograph of any protocol, synth at the protocol's resolution within
``splits.training_ranges()``); a resumed run must match it."""


def _skimage_images() -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """The photos scikit-image ships in its wheel (files only: nothing is fetched) that no protocol evaluates
    on, with their names and sha256 (``sxbench.protocols.photos.is_evaluation_photo``: by name, near-duplicate and
    file hash)."""
    from sxbench.imageio import ImageLoadError, load_image
    from sxbench.protocols.photos import data_dir, is_evaluation_photo
    from sxbench.records import file_sha256

    images, sources = [], []
    for p in sorted(data_dir().iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg") or is_evaluation_photo(p):
            continue
        try:
            im = load_image(p)
        except ImageLoadError:
            continue
        if min(im.size) < 128:
            continue
        images.append(np.asarray(im, np.float32) / 255.0)
        sources.append({"name": p.name, "sha256": file_sha256(p)})
    return images, sources


def _synth_images(cfg: TrainConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training scenes (a seed range the protocols never use) and seen-split styles on them, at the protocol's
    resolution, each parameter within ``splits.training_ranges()`` (held-out families and the held-out
    parameter range stay unseen, kept apart on circles and after rounding, as for StyleExpert)."""
    from sxbench.protocols import synthgen
    from sxbench.protocols.splits import training_ranges

    rng = np.random.default_rng(cfg.seed + 77_000_001)
    res = cfg.synth_render
    ranges = training_ranges()
    contents = [synthgen.make_scene(90_000_000 + cfg.seed * 10_000 + i, res).image for i in range(cfg.n_synth_contents)]
    fams = [f for f in synthgen.FAMILIES.values() if not f.held_out]
    styles = []
    for i in range(cfg.n_synth_styles):
        fam = fams[i % len(fams)]
        u = {name: float(rng.uniform(*ranges[fam.name][name])) for name, _, _ in fam.params}
        scene = synthgen.make_scene(95_000_000 + cfg.seed * 10_000 + i, res)
        styles.append(synthgen.apply_style(scene.image, fam.name, u, int(rng.integers(2**31))))
    return contents, styles


def training_record(cfg: TrainConfig, photos: list[dict[str, str]]) -> dict[str, Any]:
    """What the decoder is trained on (``splits.TrainingRecord``; its pixel digests go to ``image_digests.txt``)."""
    from sxbench.protocols.splits import TrainingRecord, training_ranges

    return TrainingRecord(render_resolution=cfg.synth_render, model_resolution=cfg.synth_render, ranges=training_ranges(),
                          benchmark_input="native", image_digests=DIGESTS, photos=photos).to_json()


def _crop(img: np.ndarray, res: int, rng: np.random.Generator, *, rescale: bool = True) -> torch.Tensor:
    """A random square crop resized to ``res``: its side between res and the shorter side, at most 2·res
    (``rescale``), or exactly ``res`` (no resize: pixel scales stay as rendered)."""
    h, w = img.shape[:2]
    side = int(rng.integers(res, max(res, min(h, w, 2 * res)) + 1)) if rescale else res
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    t = torch.from_numpy(np.ascontiguousarray(img[y : y + side, x : x + side])).permute(2, 0, 1)[None]
    if side != res:
        t = F.interpolate(t, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    if rng.random() < 0.5:
        t = t.flip(-1)
    return t[0].clamp(0, 1)


@torch.no_grad()
def channel_means(vgg, images: Sequence[np.ndarray], resolution: int, device: str | torch.device,
                  layers: Sequence[str] = STYLE_LAYERS) -> dict[str, torch.Tensor]:
    """Each filter's mean activation over ``images`` (centre crops at ``resolution``), as Gatys et al.
    normalised VGG-19; floored so a dead filter does not divide by zero."""
    rng = np.random.default_rng(0)
    sums: dict[str, torch.Tensor] = {}
    for img in images:
        x = _crop(img, resolution, rng)[None].to(device)
        for k, v in vgg.layers(x, layers, resize=False).items():
            sums[k] = sums.get(k, 0) + v.mean((0, 2, 3))
    return {k: (v / len(images)).clamp_min(1.0) for k, v in sums.items()}


@torch.no_grad()
def content_features(vgg, decoder: Decoder, content: torch.Tensor) -> torch.Tensor:
    """The normalised encoder-layer features of ``content`` (no gradient: the encoder is fixed)."""
    return decoder.normalise(vgg.layers(content, (decoder.layer,), resize=False))[decoder.layer]


def losses(vgg, decoder: Decoder, content: torch.Tensor, style: torch.Tensor, style_weight: float,
           fc: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's content and style losses for one batch (``fc``: ``content_features`` when already computed)."""
    enc = decoder.normalise
    if fc is None:
        fc = content_features(vgg, decoder, content)
    with torch.no_grad():
        fs = enc(vgg.layers(style, decoder.style_layers, resize=False))
        t = adain(fc, fs[decoder.layer])
    out = decoder(t)
    fo = enc(vgg.layers(out, decoder.style_layers, resize=False))
    loss_c = F.mse_loss(fo[decoder.layer], t)
    loss_s = out.new_zeros(())
    for name in decoder.style_layers:
        mo, so = mean_std(fo[name])
        ms, ss = mean_std(fs[name])
        loss_s = loss_s + F.mse_loss(mo, ms) + F.mse_loss(so, ss)
    return loss_c, style_weight * loss_s


def reconstruction_loss(vgg, decoder: Decoder, content: torch.Tensor, fc: torch.Tensor | None = None) -> torch.Tensor:
    """Decoding the content's own features gives the content back: pixel L1 plus the feature MSE at the
    encoder layer (``fc``: ``content_features`` when already computed)."""
    if fc is None:
        fc = content_features(vgg, decoder, content)
    out = decoder(fc)
    fo = decoder.normalise(vgg.layers(out, (decoder.layer,), resize=False))[decoder.layer]
    return F.l1_loss(out, content) + F.mse_loss(fo, fc)


def _step_loss(cfg: TrainConfig, step: int, vgg, dec: Decoder, c: torch.Tensor,
               s: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], float]:
    """Loss, its logged parts and the learning rate of one step (a function of the step alone)."""
    fc = content_features(vgg, dec, c)  # once: both losses of the AdaIN phase read it
    if step < cfg.warmup_steps:
        rec = reconstruction_loss(vgg, dec, c, fc)
        return rec, {"reconstruction": rec.item(), "content": 0.0, "style": 0.0}, cfg.warmup_lr
    loss_c, loss_s = losses(vgg, dec, c, s, cfg.style_weight, fc)
    loss, parts = loss_c + loss_s, {"content": loss_c.item(), "style": loss_s.item(), "reconstruction": 0.0}
    if cfg.identity_weight:
        rec = reconstruction_loss(vgg, dec, c, fc)
        loss = loss + cfg.identity_weight * rec
        parts["reconstruction"] = rec.item()
    k, n = step - cfg.warmup_steps, max(1, cfg.steps - cfg.warmup_steps)
    return loss, parts, cfg.lr * 0.5 * (1 + math.cos(math.pi * k / n))


RESUME_KEYS = ("layer", "width", "resolution", "batch_size", "warmup_steps", "warmup_lr", "lr", "style_weight",
               "identity_weight", "grad_clip", "seed", "synth_render")
"""Options a resumed run must share with the state it resumes (``steps`` may change: the learning rate from the
resumed step on follows the new total)."""


def _resume_key(cfg: TrainConfig) -> dict[str, str]:
    return {k: str(getattr(cfg, k)) for k in RESUME_KEYS} | {"data_version": DATA_VERSION}


def train(cfg: TrainConfig) -> Path:
    """Train the decoder; resumable from ``cfg.out/state.safetensors`` (written every ``checkpoint_every``
    steps), deterministic for a seed on one device. Returns the folder of the final decoder."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vgg = _encoder(cfg.device, cfg.weights_dir)
    dec = Decoder(cfg.width, cfg.layer).to(cfg.device)
    opt = torch.optim.Adam(dec.parameters(), lr=cfg.lr)
    state_path, log_path = out / "state.safetensors", out / "train_log.json"
    step, log = 0, []
    if state_path.is_file():  # resume: the state file names its step; optimizer and log follow it
        from safetensors import safe_open

        with safe_open(str(state_path), "pt") as f:
            meta = f.metadata() or {}
        wanted = _resume_key(cfg)
        trained = {k: meta.get(k) for k in wanted}
        if trained != wanted:
            raise ValueError(f"{state_path}: a run with {trained}, not {wanted}; pass the same options to resume it, "
                             "or another --out to start a new one")
        step = int(meta["step"])
        dec.load_state_dict({k[4:]: v for k, v in load_file(str(state_path)).items() if k.startswith("dec.")})
        opt.load_state_dict(torch.load(out / f"optimizer-{step}.pt", weights_only=True))
        log = [r for r in json.loads(log_path.read_text()) if r["step"] <= step] if log_path.is_file() else []
        logger.info("resuming adain decoder training at step %d", step)

    t0 = time.perf_counter()
    photos, photo_sources = _skimage_images()
    synth_c, synth_s = _synth_images(cfg)
    logger.info("training data: %d photos (none a protocol's), %d synth scenes as contents, %d synth styles as styles "
                "(%.0f s)", len(photos), len(synth_c), len(synth_s), time.perf_counter() - t0)
    if step == 0:
        dec.set_scales(channel_means(vgg, photos, cfg.resolution, cfg.device, dec.style_layers))
    pools = ((photos, synth_c), (photos, synth_s))

    def draw(pool: tuple[list[np.ndarray], list[np.ndarray]], frac: float, rng: np.random.Generator) -> torch.Tensor:
        photo, synth = pool  # photographs and synth: the decoder must reproduce both
        if rng.random() < frac:
            return _crop(photo[int(rng.integers(len(photo)))], cfg.resolution, rng)
        return _crop(synth[int(rng.integers(len(synth)))], cfg.resolution, rng, rescale=False)

    bar = tqdm(total=cfg.steps, initial=step, desc="adain decoder", disable=not cfg.progress)
    while step < min(cfg.steps, cfg.stop_at or cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])  # batch of step s is the same whether resumed or not
        c = torch.stack([draw(pools[0], cfg.photo_fraction, rng) for _ in range(cfg.batch_size)])
        s = torch.stack([draw(pools[1], cfg.photo_style_fraction, rng) for _ in range(cfg.batch_size)])
        loss, parts, lr = _step_loss(cfg, step, vgg, dec, c.to(cfg.device), s.to(cfg.device))
        for g in opt.param_groups:  # a function of the step alone (resumes exactly)
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(dec.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        log.append({"step": step, **parts})
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items() if v})
        if step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_at):
            # optimizer and log first, the state (which names the step) last: a kill anywhere leaves a
            # consistent step to resume from
            torch.save(opt.state_dict(), out / f"optimizer-{step}.pt")
            log_path.with_suffix(".tmp").write_text(json.dumps(log))
            os.replace(log_path.with_suffix(".tmp"), log_path)
            tmp = out / "state.safetensors.tmp"
            save_file({f"dec.{k}": v.contiguous().cpu() for k, v in dec.state_dict().items()}, str(tmp),
                      metadata={"step": str(step), **_resume_key(cfg)})
            os.replace(tmp, state_path)
            for old in out.glob("optimizer-*.pt"):
                if old.name != f"optimizer-{step}.pt":
                    old.unlink()
    bar.close()
    if step < cfg.steps:
        return out
    from sxbench.imageio import array_to_pil
    from sxbench.records import pixel_digest

    meta = {"command": REPRODUCE, "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress", "stop_at", "weights_dir")},
            "final_loss": log[-1] if log else None, "training_data": training_record(cfg, photo_sources)}
    folder = save_decoder(dec.eval(), out / "decoder", meta)
    digests = [pixel_digest(array_to_pil(im)) for im in photos + synth_c + synth_s]
    (folder / DIGESTS).write_text("\n".join(digests) + "\n")
    write_curve(log, folder / "train_log.json")
    return folder


def write_curve(log: list[dict[str, float]], path: Path) -> None:
    """The loss log in the report's training-curve format (``{"stage", "history": [{"step", "loss", ...}]}``)."""
    path.write_text(json.dumps({"stage": "adain decoder", "history": [
        {**r, "loss": r["content"] + r["style"] + r.get("reconstruction", 0.0)} for r in log]}))


def install(folder: Path, dest: Path = PACKAGED) -> Path:
    """Copy a trained decoder folder to the packaged location (the method's default)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("decoder.safetensors", "config.json", "train_log.json", DIGESTS):
        if (folder / name).is_file():
            shutil.copy2(folder / name, dest / name)
    return dest
