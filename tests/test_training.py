"""Training wiring at tiny size: determinism, resume after kill -9, the stages' outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

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
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_resumes_and_matches_an_uninterrupted_run(tmp_path, data):
    args = ["0", "--data", str(data), "--steps", "12", "--checkpoint-every", "2", "--batch-size", "4"]
    train(*args, "--out", str(tmp_path / "a"))
    killed = tmp_path / "b"
    proc = subprocess.Popen([*SX, "train", *args, "--out", str(killed), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = killed / "stage0" / "state.json"
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
