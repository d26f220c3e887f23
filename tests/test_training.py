"""Training wiring at tiny size: determinism, resume after kill -9, the stages' outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SX = [sys.executable, "-m", "sxbench.cli"]


def train(*args, check=True):
    p = subprocess.run([*SX, "train", *args, "--no-progress"], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


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
    # a finished stage is not redone
    again = train("all", "--out", str(out), "--data", str(data), "--steps0", "3", "--steps1", "3", "--steps2", "2")
    assert "done in" in again.stdout


def _state_step(path):
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["state"])["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_resumes_and_matches_an_uninterrupted_run(tmp_path, data):
    args = ["0", "--data", str(data), "--steps", "12", "--checkpoint-every", "2", "--batch-size", "4"]
    train(*args, "--out", str(tmp_path / "a"))
    killed = tmp_path / "b"
    proc = subprocess.Popen([*SX, "train", *args, "--out", str(killed), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = killed / "stage0" / "state.safetensors"
    deadline = time.time() + 180
    while _state_step(state) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed_from = _state_step(state)
    assert 4 <= resumed_from < 12
    train(*args, "--out", str(killed))
    log = json.loads((killed / "stage0" / "train_log.json").read_text())["history"]
    assert [h["step"] for h in log] == list(range(1, 13)), "every step once in the log"
    a = load_file(str(tmp_path / "a" / "base" / "transformer.safetensors"))
    b = load_file(str(killed / "base" / "transformer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is bit-exact"


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
