"""The full-size methods on tiny folders of the real classes, saved as ``save_pretrained`` lays them out (tokenizers
built offline): ``qwen-image-edit`` and ``flux2-klein`` are their diffusers pipelines called as the methods say;
the four methods of issue 20 (with ``styleexpert`` from the release's parts and ``flux-kontext``) run together
through ``sxbench run``; a folder that is not the method's names what to download; model offload leaves the
outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines import flux2_klein, qwen_image_edit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from styleexpert.kontext import write_tiny_release

    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SXBENCH_CACHE", str(root / "cache"))
        parts = write_tiny_release(root / "release")
    return {**parts, "qwen": qwen_image_edit.write_tiny(root / "Qwen-Image-Edit-2509"),
            "klein": flux2_klein.write_tiny(root / "FLUX.2-klein-4B"), "cache": root / "cache"}


def _pairs(n: int, size: int = 64, seed: int = 0) -> tuple[list[Image.Image], list[Image.Image]]:
    rng = np.random.default_rng(seed)
    contents = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    styles = [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return contents, styles


def test_qwen_image_edit_is_the_pipeline_with_content_and_style_as_pictures_1_and_2(tiny, monkeypatch):
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    from sxbench import registry

    assert {p.name for p in tiny["qwen"].iterdir()} >= {*qwen_image_edit.QwenImageEdit.parts, "model_index.json"}
    method = registry.create_method("qwen-image-edit", path=str(tiny["qwen"]), resolution=32, steps=2,
                                    reference_area=64 * 64)
    assert method.params["true_cfg_scale"] == 4.0 and method.params["instruction"] == qwen_image_edit.INSTRUCTION
    contents, styles = _pairs(2)
    got = method.stylize_batch(contents, styles, seeds=[3, 4])
    assert [g.shape for g in got] == [(3, 64, 64)] * 2  # sampled at 32², resized back to the content's size

    pipe = QwenImageEditPlusPipeline.from_pretrained(tiny["qwen"])
    monkeypatch.setattr(module, "VAE_IMAGE_SIZE", 64 * 64)
    want = pipe(image=[contents[0], styles[0]], prompt=qwen_image_edit.INSTRUCTION, negative_prompt=" ",
                true_cfg_scale=4.0, num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(3), output_type="pt").images[0]
    resized = torch.nn.functional.interpolate(want[None], size=(64, 64), mode="bicubic", antialias=True,
                                              align_corners=False)[0].clamp(0, 1)
    torch.testing.assert_close(got[0], resized)
    monkeypatch.undo()
    assert module.VAE_IMAGE_SIZE == qwen_image_edit.PIPELINE_VAE_AREA  # the method restored it, too
    # the reference area is a real parameter: another area, other outputs
    other = registry.create_method("qwen-image-edit", path=str(tiny["qwen"]), resolution=32, steps=2,
                                   reference_area=96 * 96)
    assert not torch.equal(other.stylize_batch(contents[:1], styles[:1], seeds=[3])[0], got[0])


def test_flux2_klein_is_the_pipeline_with_two_references_and_the_distilled_defaults(tiny):
    from diffusers import Flux2KleinPipeline

    from sxbench import registry

    assert json.loads((tiny["klein"] / "model_index.json").read_text())["is_distilled"] is True
    method = registry.create_method("flux2-klein", path=str(tiny["klein"]), resolution=32)
    assert (method.params["steps"], method.params["guidance"], method.params["distilled"]) == (4, 1.0, True)
    contents, styles = _pairs(2)
    got = method.stylize_batch(contents, styles, seeds=[5, 6])
    pipe = Flux2KleinPipeline.from_pretrained(tiny["klein"])
    refs = [im.resize((64, 64), Image.Resampling.LANCZOS) for im in (contents[1], styles[1])]  # 64: its minimum
    want = pipe(image=refs, prompt=flux2_klein.INSTRUCTION, height=32, width=32, num_inference_steps=4,
                guidance_scale=1.0, generator=torch.Generator().manual_seed(6), output_type="pt").images[0]
    resized = torch.nn.functional.interpolate(want[None], size=(64, 64), mode="bicubic", antialias=True,
                                              align_corners=False)[0].clamp(0, 1)
    torch.testing.assert_close(got[1], resized)
    assert not torch.equal(got[0], got[1])
    # the same seed gives the same output alone or in a batch
    assert torch.equal(method.stylize_batch(contents[1:], styles[1:], seeds=[6])[0], got[1])


def test_the_four_methods_run_together_through_sxbench_run(tiny, tmp_path, monkeypatch):
    """The issue's acceptance command on the tiny folders: every sample produced, stored, scored and reported;
    ``styleexpert`` encodes the instruction from the Kontext folder, loads the release's adapter and projector
    files, and stores its routing."""
    from sxbench.cli import main
    from sxbench.store import Store

    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    params = {"styleexpert": {"flux": tiny["flux"], "siglip": tiny["siglip"], "adapters": tiny["adapters"],
                              "projector": tiny["projector"], "resolution": 32, "steps": 2},
              "flux-kontext": {"path": tiny["flux"], "resolution": 32, "steps": 2},
              "qwen-image-edit": {"path": tiny["qwen"], "resolution": 32, "steps": 2, "reference_area": 4096},
              "flux2-klein": {"path": tiny["klein"], "resolution": 32}}
    args = [a for m, kv in params.items() for k, v in kv.items() for a in ("--param", f"{m}.{k}={v}")]
    out = tmp_path / "run"
    assert main(["run", "--protocol", "synth-smoke", "--methods", ",".join(params), "--metrics",
                 "content_ssim,style_color_swd", "--no-progress", "--out", str(out), *args]) == 0
    with Store(out) as st:
        samples, values, routing = st.samples(), st.values(), st.routing()
    assert len(samples) == 32 and (samples.status == "ok").all()
    assert samples.groupby("method").size().to_dict() == {m: 8 for m in params}
    assert len(values) == 64 and np.isfinite(values.value).all()
    assert set(routing.method) == {"styleexpert"} and len(routing) > 0
    for rel in samples.output_path:
        with Image.open(out / rel) as im:
            assert im.size == (64, 64)
    html = (out / "index.html").read_text()
    assert all(m in html for m in params)
    assert not list(tmp_path.glob("**/prompt*.safetensors"))  # no instruction embedding file anywhere


def test_release_projector_file_loads_the_same_projector_as_ours(tiny, monkeypatch):
    from safetensors.torch import load_file

    from sxbench import registry

    from styleexpert.io import released_projector_state_dict
    from styleexpert.kontext import preset_for_folder

    monkeypatch.setenv("SXBENCH_CACHE", str(tiny["cache"]))
    method = registry.create_method("styleexpert", flux=str(tiny["flux"]), siglip=str(tiny["siglip"]),
                                    adapters=str(tiny["adapters"]), projector=str(tiny["projector"]),
                                    resolution=32, steps=2)
    release = load_file(str(tiny["projector"]))
    assert all(k.startswith("proj_model.") for k in release)
    layers = preset_for_folder(tiny["flux"], siglip=tiny["siglip"])["encoder"]["layer_indices"]
    want = released_projector_state_dict(release, layers)
    got = method.model.style_encoder.projector.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_model_offload_changes_where_weights_live_not_the_outputs(tiny, monkeypatch):
    from sxbench import registry

    monkeypatch.setenv("SXBENCH_CACHE", str(tiny["cache"]))
    contents, styles = _pairs(2, size=32)
    kw = {"flux": str(tiny["flux"]), "siglip": str(tiny["siglip"]), "adapters": str(tiny["adapters"]),
          "projector": str(tiny["projector"]), "resolution": 32, "steps": 2}
    plain = registry.create_method("styleexpert", **kw)
    offloaded = registry.create_method("styleexpert", offload="model", **kw)
    assert offloaded.pipe.offload == torch.device("cpu") and offloaded.provenance["offload"] == "model"
    assert offloaded.info.config_hash == plain.info.config_hash  # the same stored outputs
    staged = []
    for name in ("vae", "style_encoder", "transformer"):
        getattr(offloaded.model, name).register_forward_pre_hook(lambda *a, n=name: staged.append(n))
    want = plain.stylize_batch(contents, styles, seeds=[0, 1])
    got = offloaded.stylize_batch(contents, styles, seeds=[0, 1])
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert {"style_encoder", "transformer"} <= set(staged)

    klein = registry.create_method("flux2-klein", path=str(tiny["klein"]), resolution=32)
    klein_off = registry.create_method("flux2-klein", path=str(tiny["klein"]), resolution=32, offload="model")
    assert klein_off.info.config_hash == klein.info.config_hash
    a, b = klein.stylize_batch(contents, styles, seeds=[2, 3]), klein_off.stylize_batch(contents, styles, seeds=[2, 3])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_folder_that_is_not_the_methods_names_the_download(tiny, tmp_path):
    from sxbench import registry

    cases = [({}, ValueError, ["qwen-image-edit.path=DIR", qwen_image_edit.HUB_ID]),
             ({"path": str(tmp_path)}, FileNotFoundError, ["processor/", "model_index.json", qwen_image_edit.HUB_ID]),
             ({"path": str(tiny["klein"])}, ValueError, ["Flux2KleinPipeline", qwen_image_edit.HUB_ID]),
             ({"path": str(tiny["qwen"]), "offload": "disk"}, ValueError, ["qwen-image-edit.offload='disk'", "sequential"]),
             ({"path": str(tiny["qwen"]), "dtype": "fp8"}, ValueError, ["qwen-image-edit.dtype='fp8'", "bf16"])]
    for kw, error, words in cases:
        with pytest.raises(error) as err:
            registry.create_method("qwen-image-edit", **kw)
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
    with pytest.raises(ValueError) as err:
        registry.create_method("flux2-klein", path=str(tiny["qwen"]))
    assert "\n" not in str(err.value) and flux2_klein.HUB_ID in str(err.value) and "QwenImageEditPlus" in str(err.value)
    with pytest.raises(ValueError, match="styleexpert.offload='sequential'"):
        registry.create_method("styleexpert", offload="sequential")


def test_list_methods_names_the_folders_each_method_needs(capsys):
    from sxbench.cli import main

    assert main(["list", "methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name in ("flux-kontext", "qwen-image-edit", "flux2-klein"):
        assert f"--param {name}.path" in lines[name], lines[name]


def test_the_tiny_folder_commands_write_loadable_folders(tmp_path):
    import subprocess
    import sys

    for module in ("baselines.qwen_image_edit", "baselines.flux2_klein"):
        out = tmp_path / module
        proc = subprocess.run([sys.executable, "-m", module, "tiny", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr[-2000:]
        assert (out / "model_index.json").is_file()
    proc = subprocess.run([sys.executable, "-m", "baselines.flux2_klein"], capture_output=True, text=True)
    assert proc.returncode == 2 and "tiny OUT" in proc.stderr
