"""FLUX.1-Kontext folders (``styleexpert.kontext``): a tiny folder of the real classes written as
``save_pretrained`` lays it out loads and runs in diffusers' own ``FluxKontextPipeline``; the instruction encoded
by ``encode_instruction`` is the pipeline's ``encode_prompt``; it is cached per folder and prompt; a folder that
is not one says what to download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleexpert import kontext


@pytest.fixture(scope="module")
def tiny_kontext(tmp_path_factory) -> Path:
    return kontext.write_tiny_kontext(tmp_path_factory.mktemp("kontext") / "FLUX.1-Kontext-dev")


def test_the_tiny_folder_has_the_real_layout_and_runs_in_diffusers(tiny_kontext):
    from diffusers import FluxKontextPipeline

    assert {p.name for p in tiny_kontext.iterdir()} >= {"transformer", "vae", "text_encoder", "text_encoder_2",
                                                         "tokenizer", "tokenizer_2", "scheduler", "model_index.json"}
    pipe = FluxKontextPipeline.from_pretrained(tiny_kontext)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = pipe(image=image, prompt=kontext.INSTRUCTION, height=32, width=32, num_inference_steps=2,
               guidance_scale=3.5, generator=torch.Generator().manual_seed(0), max_sequence_length=16,
               max_area=32 * 32, _auto_resize=False, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_the_instruction_is_the_pipelines_own_encoding_and_is_cached(tiny_kontext, tmp_path, monkeypatch):
    from diffusers import FluxKontextPipeline

    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    got = kontext.encode_instruction(tiny_kontext, max_sequence_length=16)
    pipe = FluxKontextPipeline.from_pretrained(tiny_kontext)
    want, pooled, _ = pipe.encode_prompt(prompt=kontext.INSTRUCTION, prompt_2=None, max_sequence_length=16)
    assert got["prompt_embeds"].shape == (16, 32) and got["pooled_prompt_embeds"].shape == (32,)
    torch.testing.assert_close(got["prompt_embeds"], want[0].float())
    torch.testing.assert_close(got["pooled_prompt_embeds"], pooled[0].float())
    other = kontext.encode_instruction(tiny_kontext, "a different instruction", max_sequence_length=16)
    assert not torch.equal(other["prompt_embeds"], got["prompt_embeds"])
    assert len(list((tmp_path / "cache" / "prompts").glob("*.safetensors"))) == 2

    def refuse(*a, **k):
        raise AssertionError("the text encoders were loaded again: the cache was not used")

    import transformers

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", refuse)
    again = kontext.encode_instruction(tiny_kontext, max_sequence_length=16)
    torch.testing.assert_close(again["prompt_embeds"], got["prompt_embeds"])


def test_a_folder_that_is_not_kontext_names_the_download(tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        kontext.encode_instruction(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and kontext.HUB_ID in msg and "text_encoder_2/" in msg and str(tmp_path) in msg


def test_flux_kontext_runs_through_sxbench_run_with_the_bare_base(tiny_kontext, tmp_path, monkeypatch):
    """``flux-kontext`` on the tiny folder: ``sxbench run`` produces, stores and scores every sample; the model is
    the folder's transformer unchanged (every adapter's B is 0: no delta) in StyleExpert's layout; without a folder,
    one line names the download."""
    from sxbench import registry
    from sxbench.cli import main
    from sxbench.store import Store

    from diffusers import FluxTransformer2DModel

    from styleexpert.io import base_state_dict

    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["run", "--protocol", "synth-smoke", "--methods", "flux-kontext", "--param",
                 f"flux-kontext.path={tiny_kontext}", "--param", "flux-kontext.resolution=32", "--param",
                 "flux-kontext.steps=2", "--metrics", "content_ssim", "--no-progress", "--out", str(out)]) == 0
    with Store(out) as st:
        samples, values = st.samples(), st.values()
    assert len(samples) == 8 and (samples.status == "ok").all() and len(values) == 8
    for rel in samples.output_path:
        with Image.open(out / rel) as im:
            assert im.size == (64, 64)  # the protocol's resolution, sampled at 32² and resized back
    assert (out / "index.html").is_file()

    method = registry.create_method("flux-kontext", path=str(tiny_kontext), resolution=32, steps=2)
    want = FluxTransformer2DModel.from_pretrained(tiny_kontext / "transformer").state_dict()
    got = base_state_dict(method.model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    bs = [p for n, p in method.model.named_parameters() if n.endswith("lora_B")]
    assert bs and all(bool((b == 0).all()) for b in bs)
    assert method.info.params["steps"] == 2 and len(method.info.params["weights"]) == 16

    with pytest.raises(ValueError) as err:
        registry.create_method("flux-kontext")
    assert "\n" not in str(err.value) and kontext.HUB_ID in str(err.value) and "flux-kontext.path=" in str(err.value)


def test_styleexpert_at_full_size_from_the_release_parts(tiny_kontext, tmp_path, monkeypatch):
    """``styleexpert`` with ``flux=``, ``siglip=``, ``adapters=``, ``projector=`` (tiny folders of the real classes):
    the instruction is encoded from the folder itself (no embedding file anywhere), ``sxbench run`` produces,
    stores, scores and routes every sample; the release's adapter format is detected and loads the same weights
    as ours, in the release's weighting, and gives the same outputs as our checkpoint saved with that weighting."""
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from sxbench import registry
    from sxbench.cli import main
    from sxbench.store import Store

    from styleexpert import inject
    from styleexpert.io import RELEASED_KEYS, load_pretrained, save_checkpoint

    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    siglip = tmp_path / "siglip"
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=20,
                                         num_attention_heads=2, image_size=28, patch_size=14)).save_pretrained(siglip)
    cfg = kontext.preset_for_folder(tiny_kontext, resolution=32, steps=2, siglip=siglip)
    ref = load_pretrained(cfg, "moe", flux=tiny_kontext, siglip=siglip)
    with torch.no_grad():
        for p in inject.adapter_state_dict(ref.transformer).values():
            p.copy_(0.05 * torch.randn_like(p))
    save_checkpoint(ref, tmp_path / "ckpt", include_base=False)  # ours: adapters.safetensors, encoder.safetensors
    released = {f"transformer.{name}.lora_layer.{leaf}": layer.lora_layer.get_parameter(leaf).detach().contiguous()
                for name, layer in inject.adapters(ref.transformer).items() for leaf in RELEASED_KEYS}
    save_file(released, str(tmp_path / "moe_released.safetensors"))
    (tmp_path / "ckpt" / "prompt.safetensors").unlink()  # the instruction must come from the folder, not a file
    assert not list(tmp_path.glob("**/prompt*.safetensors"))

    params = [f"styleexpert.flux={tiny_kontext}", f"styleexpert.siglip={siglip}",
              f"styleexpert.adapters={tmp_path / 'ckpt' / 'adapters.safetensors'}",
              f"styleexpert.projector={tmp_path / 'ckpt' / 'encoder.safetensors'}", "styleexpert.resolution=32",
              "styleexpert.steps=2"]
    out = tmp_path / "run"
    assert main(["run", "--protocol", "synth-smoke", "--methods", "styleexpert", "--metrics", "content_ssim",
                 "--no-progress", "--out", str(out), *[a for p in params for a in ("--param", p)]]) == 0
    with Store(out) as st:
        samples, routing = st.samples(), st.routing()
    assert len(samples) == 8 and (samples.status == "ok").all() and len(routing) > 0

    kw = {"flux": str(tiny_kontext), "siglip": str(siglip), "projector": str(tmp_path / "ckpt" / "encoder.safetensors"),
          "resolution": 32, "steps": 2}
    a = registry.create_method("styleexpert", adapters=str(tmp_path / "ckpt" / "adapters.safetensors"), **kw)
    b = registry.create_method("styleexpert", adapters=str(tmp_path / "moe_released.safetensors"), **kw)
    assert a.params["released_adapters"] is False and b.params["released_adapters"] is True
    wa, wb = inject.adapter_state_dict(a.model.transformer), inject.adapter_state_dict(b.model.transformer)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(m.released_compat for m in inject.adapters(b.model.transformer).values())
    torch.testing.assert_close(a.model.prompt_embeds, kontext.encode_instruction(tiny_kontext)["prompt_embeds"])
    # our checkpoint saved with the release's weighting gives the same outputs as the release's file
    for layer in inject.adapters(ref.transformer).values():
        layer.released_compat = True
    save_checkpoint(ref, tmp_path / "compat", include_base=False)
    c = registry.create_method("styleexpert", adapters=str(tmp_path / "compat" / "adapters.safetensors"), **kw)
    rng = np.random.default_rng(1)
    contents = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    styles = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    got_c, got_b = c.stylize_batch(contents, styles, seeds=[0, 1]), b.stylize_batch(contents, styles, seeds=[0, 1])
    assert all(torch.equal(x, y) for x, y in zip(got_c, got_b))
    got_a = a.stylize_batch(contents, styles, seeds=[0, 1])
    assert not all(torch.equal(x, y) for x, y in zip(got_a, got_b))  # the two weightings differ: the test can fail
    with pytest.raises(ValueError, match="styleexpert.siglip=PATH"):
        registry.create_method("styleexpert", flux=str(tiny_kontext), adapters=str(tmp_path / "ckpt" / "adapters.safetensors"))
