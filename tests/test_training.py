"""Training wiring at tiny size: determinism, resume after a stop and after kill -9, refusal to resume with
other options, the stages' outputs."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SX = [sys.executable, "-m", "sxbench.cli"]


def train(*args, check=True, env=None):
    p = subprocess.run([*SX, "train", *args, "--no-progress"], capture_output=True, text=True,
                       env=None if env is None else os.environ | env)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


def _files(root):
    """``{relative path: (mtime_ns, bytes)}`` of every file under ``root``."""
    return {str(f.relative_to(root)): (f.stat().st_mtime_ns, f.read_bytes()) for f in sorted(root.rglob("*"))
            if f.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    subprocess.run([*SX, "data", "synth", "--out", str(d), "--n", "24", "--resolution", "64", "--no-progress"], check=True,
                   capture_output=True)
    return d


def test_all_stages_produce_checkpoints_and_logs(tmp_path, data):
    out = tmp_path / "t"
    train("all", "--out", str(out), "--data", str(data), "--steps0", "3", "--steps1", "3", "--steps2", "2",
          "--batch-size", "4")
    for name in ("base", "encoder", "moe", "lora", "noprior"):
        assert (out / name / "config.json").is_file(), name
    log = json.loads((out / "stage2-moe" / "train_log.json").read_text())
    assert [h["step"] for h in log["history"]] == [1, 2] and all(h["loss"] > 0 for h in log["history"])
    from styleexpert.io import load_checkpoint

    base, enc, moe, noprior = (load_checkpoint(out / n) for n in ("base", "encoder", "moe", "noprior"))
    # stage 1 changes the projector only; stage 2 keeps base and encoder frozen
    assert not torch.equal(base.style_encoder.projector.proj[0].weight, enc.style_encoder.projector.proj[0].weight)
    assert torch.equal(moe.style_encoder.projector.proj[0].weight, enc.style_encoder.projector.proj[0].weight)
    assert not torch.equal(noprior.style_encoder.projector.proj[0].weight, enc.style_encoder.projector.proj[0].weight)
    b = dict(base.transformer.named_parameters())
    for n, p in moe.transformer.named_parameters():
        if ".lora_layer." not in n:
            assert torch.equal(p, b[n]), n
    assert any(p.abs().sum() > 0 for n, p in moe.transformer.named_parameters() if n.endswith("loraB"))
    # a finished stage is not redone: nothing under out is rewritten, and each stage says it skipped
    before = _files(out)
    again = train("all", "--out", str(out), "--data", str(data), "--steps0", "3", "--steps1", "3", "--steps2", "2",
                  "--batch-size", "4")
    assert _files(out) == before, "a finished stage rewrote its files"
    for stage in ("stage 0", "stage 1", "stage 2 (moe)", "stage 2 (lora)", "stage 2 (noprior)"):
        assert f"{stage} already done" in again.stderr, stage


def test_tiny_v2_trains_its_autoencoder_and_stores_it_with_the_base(tmp_path, data, tiny_weights):
    """tiny-v2: ``all`` first trains the autoencoder and sets the latent normalisation from its latents, stage 0
    stores it beside the base, and stage 2 with ``--balance`` writes a separate ``moe-balance``."""
    from safetensors.torch import load_file as load

    from styleexpert.io import load_checkpoint
    from styleexpert.train import TripletData

    out = tmp_path / "v2"
    common = ["--preset", "tiny-v2", "--out", str(out), "--data", str(data), "--batch-size", "2",
              "--weights-dir", str(tiny_weights)]
    train("all", *common, "--steps-vae", "2", "--steps0", "2", "--steps1", "2", "--steps2", "1")
    norm = json.loads((out / "vae" / "latent.json").read_text())
    base = load_checkpoint(out / "base", weights_root=tiny_weights)
    assert {k: base.config["latent"][k] for k in norm} == norm
    assert all(torch.equal(v, base.vae.state_dict()[k]) for k, v in load(str(out / "vae" / "vae.safetensors")).items())
    assert not any(k.startswith("backbone.") for k in load(str(out / "moe" / "encoder.safetensors")))
    # the normalisation is the one of the training latents: the encoded training images have mean 0 and std 1
    images = TripletData(data, 128, split=None)
    with torch.no_grad():
        lat = base.encode(TripletData.floats(torch.cat([images.content, images.style, images.target])))
    assert abs(lat.mean().item()) < 0.2 and lat.std().item() == pytest.approx(1.0, abs=0.2)
    balanced = train("2", *common, "--variant", "moe", "--steps", "1", "--balance", "0.01")
    assert (out / "moe-balance" / "config.json").is_file() and balanced.returncode == 0
    assert json.loads((out / "moe-balance" / "config.json").read_text())["balance"] == 0.01


def _state_step(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["state"])["step"]


def test_kill_9_resumes_and_matches_an_uninterrupted_run(tmp_path, data):
    """The one real kill -9: the process SIGKILLs itself right after writing the state of step 2 (test hook
    SXBENCH_KILL_AT_STEP), so where it dies is known, not raced."""
    args = ["0", "--data", str(data), "--steps", "4", "--checkpoint-every", "2", "--batch-size", "4"]
    train(*args, "--out", str(tmp_path / "a"))
    killed = tmp_path / "b"
    p = train(*args, "--out", str(killed), check=False, env={"SXBENCH_KILL_AT_STEP": "2"})
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert _state_step(killed / "stage0" / "state.safetensors") == 2
    assert not (killed / "base").exists() and not (killed / "stage0" / "train_log.json").exists()
    resumed = train(*args, "--out", str(killed))
    assert "stage0: resuming from step 2" in resumed.stderr
    log = json.loads((killed / "stage0" / "train_log.json").read_text())["history"]
    assert [h["step"] for h in log] == [1, 2, 3, 4], "every step once in the log"
    ref = json.loads((tmp_path / "a" / "stage0" / "train_log.json").read_text())["history"]
    assert [h["loss"] for h in log] == [h["loss"] for h in ref]
    a = load_file(str(tmp_path / "a" / "base" / "transformer.safetensors"))
    b = load_file(str(killed / "base" / "transformer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is bit-exact"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A stage-0-format checkpoint (random tiny base, projector and adapters) to start stages 1 and 2 from."""
    from styleexpert.io import save_checkpoint
    from styleexpert.pipeline import build

    return save_checkpoint(build("tiny", seed=0), tmp_path_factory.mktemp("base") / "base")


def _stage(stage, cfg, base):
    from styleexpert import train

    return train.stage1(cfg, base) if stage == "1" else train.stage2(cfg, "moe", base, base)


def _trained(stage, folder):
    """What a finished stage trained: the projector (stage 1) or the adapters (stage 2)."""
    name = "encoder.safetensors" if stage == "1" else "adapters.safetensors"
    return load_file(str(folder / ("encoder" if stage == "1" else "moe") / name))


@pytest.mark.parametrize("stage", ["1", "2"])
def test_stage_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path, data, tiny_base, stage, caplog):
    from styleexpert.train import TrainConfig

    steps, stop = (3, 2) if stage == "1" else (2, 1)  # stage 2 steps are slow on a CPU
    cfg = TrainConfig(out=tmp_path / "a", data=data, steps=steps, batch_size=2, checkpoint_every=100, progress=False,
                      seed=3)
    assert _stage(stage, cfg, tiny_base) == tmp_path / "a" / ("encoder" if stage == "1" else "moe")
    split = dataclasses.replace(cfg, out=tmp_path / "b", stop_at=stop)
    assert _stage(stage, split, tiny_base) is None, "stopped early: no finished checkpoint"
    name = "stage1" if stage == "1" else "stage2-moe"
    assert _state_step(tmp_path / "b" / name / "state.safetensors") == stop
    assert not (tmp_path / "b" / name / "train_log.json").exists()
    with caplog.at_level(logging.INFO, logger="styleexpert.train"):
        assert _stage(stage, dataclasses.replace(split, stop_at=None), tiny_base) is not None
    assert f"{name}: resuming from step {stop}" in caplog.text
    a, b = _trained(stage, tmp_path / "a"), _trained(stage, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is bit-exact"
    before = load_file(str(tiny_base / ("encoder.safetensors" if stage == "1" else "adapters.safetensors")))
    assert any(not torch.equal(a[k], before[k]) for k in a), "the stage trained something"
    log_a = json.loads((tmp_path / "a" / name / "train_log.json").read_text())["history"]
    log_b = json.loads((tmp_path / "b" / name / "train_log.json").read_text())["history"]
    assert [h["step"] for h in log_b] == list(range(1, steps + 1))
    assert [(h["loss"], h["lr"]) for h in log_b] == [(h["loss"], h["lr"]) for h in log_a]


@pytest.fixture(scope="module")
def rank2_base(tmp_path_factory):
    """The same base with rank-2 experts: what a changed ``--preset``/overrides would give stage 2."""
    from styleexpert.io import save_checkpoint
    from styleexpert.pipeline import build

    return save_checkpoint(build("tiny", seed=0, overrides={"moe": {"rank": 2}}), tmp_path_factory.mktemp("b") / "base")


def test_cli_stop_at_leaves_a_resumable_state(tmp_path, data, tiny_base, capsys):
    """The hidden ``--stop-at`` of ``sxbench train``: the stage stops with its state saved and no checkpoint;
    the command without it finishes the stage from there."""
    import shutil

    from sxbench.cli import main

    shutil.copytree(tiny_base, tmp_path / "base")
    args = ["train", "1", "--out", str(tmp_path), "--data", str(data), "--steps", "3", "--batch-size", "2",
            "--no-progress"]
    assert main([*args, "--stop-at", "1"]) == 0
    assert "stopped at step 1" in capsys.readouterr().out
    assert _state_step(tmp_path / "stage1" / "state.safetensors") == 1 and not (tmp_path / "encoder").exists()
    assert main(args) == 0
    log = json.loads((tmp_path / "stage1" / "train_log.json").read_text())["history"]
    assert [h["step"] for h in log] == [1, 2, 3] and (tmp_path / "encoder" / "config.json").is_file()


OTHER_OPTIONS = {
    "1": [{"lr": 5e-4}, {"batch_size": 4}, {"seed": 4}, {"temperature": 0.1}, {"steps": 40}],
    "2": [{"lr": 5e-4}, {"batch_size": 4}, {"seed": 4}, {"timestep_sampling": "logit_normal"}, {"steps": 40}, "rank"],
}


@pytest.mark.parametrize("stage", ["1", "2"])
def test_resume_with_other_options_names_the_state_file(tmp_path, data, tiny_base, rank2_base, stage):
    """Every option that shapes the run is checked (``steps`` through the warm-up: 40 steps warm up over 4)."""
    from styleexpert.train import TrainConfig

    cfg = TrainConfig(out=tmp_path, data=data, steps=4, batch_size=2, progress=False, seed=3, stop_at=1)
    assert _stage(stage, cfg, tiny_base) is None
    state = tmp_path / ("stage1" if stage == "1" else "stage2-moe") / "state.safetensors"
    saved = state.read_bytes()
    for change in OTHER_OPTIONS[stage]:
        other = dataclasses.replace(cfg, stop_at=None, **({} if change == "rank" else change))
        with pytest.raises(ValueError, match=rf"{state}: a run with other options.*another --out"):
            _stage(stage, other, rank2_base if change == "rank" else tiny_base)
        assert state.read_bytes() == saved, f"{change}: the refused run left the state alone"
    # the same options resume it (steps may change where the warm-up stays the same)
    assert _stage(stage, dataclasses.replace(cfg, stop_at=None, steps=2), tiny_base) is not None


def test_torchrun_two_processes_train_with_averaged_gradients(tmp_path, data):
    """The multi-GPU path (`accelerate launch`/`torchrun`), wired at tiny size on two CPU processes (gloo)."""
    out = tmp_path / "t"
    train("0", "--out", str(out), "--data", str(data), "--steps", "2", "--batch-size", "2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sxbench", "train", "2",
           "--variant", "lora", "--out", str(out), "--data", str(data), "--steps", "2", "--batch-size", "2", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    log = json.loads((out / "stage2-lora" / "train_log.json").read_text())
    assert log["config"]["world"] == "2" and [h["step"] for h in log["history"]] == [1, 2]
    assert json.loads((out / "lora" / "config.json").read_text())["world_size"] == 2


def _average_worker(rank, path):
    import torch.distributed as dist

    from styleexpert.train import _average_gradients

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.full((3, 2), float(rank + 1))
    params[1].grad = torch.arange(5.0) * (rank + 1)
    if rank == 0:  # an unused parameter on one rank counts as a zero gradient
        params[2].grad = torch.full((4,), 4.0)
    _average_gradients(params, 2, bucket=6)  # small buckets: several all-reduces
    assert torch.equal(params[0].grad, torch.full((3, 2), 1.5))
    assert torch.equal(params[1].grad, torch.arange(5.0) * 1.5)
    assert torch.equal(params[2].grad, torch.full((4,), 2.0))
    dist.destroy_process_group()


def test_average_gradients_across_two_processes(tmp_path):
    torch.multiprocessing.spawn(_average_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 'FLUX.1-Kontext-dev' and 'SigLIP' in their hub on-disk formats, and an instruction embedding."""
    from diffusers import FluxTransformer2DModel
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from styleexpert.presets import get_preset

    root = tmp_path_factory.mktemp("pretrained")
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    FluxTransformer2DModel(**cfg["transformer"]).save_pretrained(root / "flux" / "transformer")
    SiglipVisionModel(SiglipVisionConfig(**cfg["encoder"]["backbone"])).save_pretrained(root / "siglip")
    save_file({"prompt_embeds": torch.randn(6, 64), "pooled_prompt_embeds": torch.randn(64)}, str(root / "prompt.safetensors"))
    return root


def test_without_an_embedding_the_instruction_is_encoded_from_the_flux_folder(tmp_path, pretrained, monkeypatch):
    """``load_pretrained`` with no ``prompt_embeds``: the folder's own CLIP and T5 (tiny, of the real classes, in
    the pipeline's layout) encode the release's instruction, as ``styleexpert.kontext.encode_instruction`` does."""
    import shutil

    from styleexpert.io import load_pretrained
    from styleexpert.kontext import MAX_SEQUENCE_LENGTH, encode_instruction, write_tiny_text_encoders

    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    flux = shutil.copytree(pretrained / "flux", tmp_path / "flux")
    with pytest.raises(FileNotFoundError, match="text_encoder/"):
        load_pretrained("tiny", "lora", flux=flux, siglip=None)
    write_tiny_text_encoders(flux, width=64)
    model = load_pretrained("tiny", "lora", flux=flux, siglip=None)
    want = encode_instruction(flux)
    assert model.prompt_embeds.shape == (MAX_SEQUENCE_LENGTH, 64) and model.pooled_prompt_embeds.shape == (64,)
    assert torch.equal(model.prompt_embeds.data, want["prompt_embeds"])
    assert torch.equal(model.pooled_prompt_embeds.data, want["pooled_prompt_embeds"])


def test_stages_1_and_2_on_a_pretrained_base(tmp_path, data, pretrained):
    """The full preset's path (--flux/--siglip/--prompt-embeds), wired with tiny models in the real formats."""
    from diffusers import FluxTransformer2DModel

    from styleexpert.io import base_state_dict, load_checkpoint

    out = tmp_path / "t"
    flags = ["--flux", str(pretrained / "flux"), "--siglip", str(pretrained / "siglip"),
             "--prompt-embeds", str(pretrained / "prompt.safetensors")]
    for stage in (["1"], ["2", "--variant", "moe"]):
        train(*stage, "--out", str(out), "--data", str(data), "--steps", "2", "--batch-size", "4", *flags)
    model = load_checkpoint(out / "moe")
    flux = FluxTransformer2DModel.from_pretrained(pretrained / "flux" / "transformer").state_dict()
    ours = base_state_dict(model)
    assert ours.keys() == flux.keys() and all(torch.equal(ours[k], flux[k]) for k in flux), "base = the pretrained weights"
    assert model.prompt_embeds.shape == (6, 64)
    enc = load_checkpoint(out / "encoder")
    assert torch.equal(model.style_encoder.projector.proj[0].weight, enc.style_encoder.projector.proj[0].weight)
    # a missing pretrained folder: one error naming what to download
    bad = train("2", "--variant", "lora", "--out", str(out), "--data", str(data), "--steps", "1",
                "--flux", str(tmp_path / "nowhere"), "--prompt-embeds", str(pretrained / "prompt.safetensors"), check=False)
    assert bad.returncode != 0 and "black-forest-labs/FLUX.1-Kontext-dev" in bad.stderr
