"""DreamSim ensemble offline: tiny random towers written in the release's on-disk format (the v0.2 zip with the CLIP
towers and the PEFT adapter, plus DINO's backbone file), converted and loaded through ``sxbench.weights`` and
``load_extractor``; the LoRA merge checked against the unmerged towers with the adapter applied as PEFT does."""

from __future__ import annotations

import json
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sxbench import registry, weights
from sxbench.backbones.dreamsim import DINO_FILE, RELEASE_ZIP, TOWERS, DreamSim, ViT, lora_scaling
from sxbench.weights import load_extractor

WIDTH, DEPTH, PATCH, GRID, HIDDEN, PROJ = 128, 2, 16, 2, 256, 32  # heads = WIDTH // 64 = 2, as in ViT-B
ADAPTER_CONFIG = {  # the fields PEFT's LoraConfig.save_pretrained writes that matter here
    "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "r": 16, "lora_alpha": 0.5,
    "lora_dropout": 0.3, "bias": "none", "target_modules": ["qkv"], "fan_in_fan_out": False, "use_rslora": False,
    "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "init_lora_weights": True,
}


def _tiny_tower(tower, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights of one tower in DINO's layout (CLIP's ln_pre under ``norm_pre``)."""
    vit = ViT(width=WIDTH, depth=DEPTH, heads=WIDTH // 64, patch=PATCH, grid=GRID, mlp_hidden=HIDDEN, eps=tower.eps,
              quick_gelu=tower.quick_gelu, pre_norm=tower.projected, proj_dim=PROJ if tower.projected else 0)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name:  # LayerNorm: near identity
                nn.init.normal_(p, 1.0 if name.endswith("weight") else 0.0, 0.1, generator=g)
            elif p.dim() >= 2 and name not in ("cls_token", "pos_embed"):
                nn.init.normal_(p, 0.0, p[0].numel() ** -0.5 if name != "proj" else WIDTH ** -0.5, generator=g)
            else:
                nn.init.normal_(p, 0.0, 0.2, generator=g)
    return {k: v.clone() for k, v in vit.state_dict().items()}


def write_tiny_release(folder: Path, seed: int = 0, adapter_format: str = "safetensors") -> dict:
    """``folder/dreamsim_ensemble_checkpoint.zip`` and ``folder/dino_vitbase16_pretrain.pth`` as the release and
    DINO publish them, on tiny towers; returns the base tensors and the adapter (for reference computations)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = {t.name: _tiny_tower(t, g) for t in TOWERS}
    torch.save(base["dino"], folder / DINO_FILE)  # the plain backbone state dict torch.hub loads
    adapter = {}
    for i, t in enumerate(TOWERS):
        for j in range(DEPTH):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv"
            adapter[f"{key}.lora_A.weight"] = torch.randn(16, WIDTH, generator=g) * WIDTH ** -0.5
            adapter[f"{key}.lora_B.weight"] = torch.randn(3 * WIDTH, 16, generator=g)  # trained: not PEFT's zeros
    tmp = folder / "_release"
    tmp.mkdir()
    with zipfile.ZipFile(folder / RELEASE_ZIP, "w") as zf:
        # DINO's training checkpoint: DreamSim reads only its projection head, which the ensemble never uses
        torch.save({"student": {"module.head.mlp.0.weight": torch.zeros(4, WIDTH)}}, tmp / "dino_vitb16_pretrain.pth")
        zf.write(tmp / "dino_vitb16_pretrain.pth", "dino_vitb16_pretrain.pth")
        for t in TOWERS[1:]:
            sd = {("pos_drop." + k[len("norm_pre."):] if k.startswith("norm_pre.") else k): v
                  for k, v in base[t.name].items()}
            torch.save({"state_dict": sd}, tmp / t.source)
            zf.write(tmp / t.source, t.source)
        zf.writestr("ensemble_lora/adapter_config.json", json.dumps(ADAPTER_CONFIG))
        if adapter_format == "safetensors":
            save_file(adapter, str(tmp / "adapter_model.safetensors"))
            zf.write(tmp / "adapter_model.safetensors", "ensemble_lora/adapter_model.safetensors")
        else:
            torch.save(adapter, tmp / "adapter_model.bin")
            zf.write(tmp / "adapter_model.bin", "ensemble_lora/adapter_model.bin")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return {"base": base, "adapter": adapter}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreamsim-weights")
    written = write_tiny_release(root / "dreamsim-ensemble")
    weights.fetch("dreamsim-ensemble", root)  # both files are in place: no network
    return root, written


def _img(seed: int, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g)


def test_fetch_converts_hand_placed_release_files(release):
    root, _ = release
    st = weights.status("dreamsim-ensemble", root)
    assert st["present"] and st["ok"] is True, st["detail"]
    record = json.loads((root / "dreamsim-ensemble" / "source.json").read_text())
    assert record["stored"] == "model.safetensors" and record["stored_sha256"] == st["sha256"]
    from safetensors import safe_open

    with safe_open(str(st["path"]), framework="pt") as f:
        meta = f.metadata()
        assert {"dino.blocks.0.attn.qkv.weight", "clip.norm_pre.weight", "clip.proj", "open_clip.proj"} <= set(f.keys())
        assert not any("lora" in k for k in f.keys())
    assert json.loads(meta["config"]) == {t.name: {"heads": 2} for t in TOWERS}
    assert float(meta["lora_scaling"]) == pytest.approx(0.5 / 16)


@pytest.mark.parametrize("adapter_format", ["safetensors", "bin"])
def test_converter_merges_lora_like_peft_applies_it(tmp_path, adapter_format):
    """Merged towers = unmerged towers whose qkv outputs get ``scaling · B(A(x))`` added (PEFT's LoRA forward)."""
    written = write_tiny_release(tmp_path / "src", seed=1, adapter_format=adapter_format)
    weights._convert_dreamsim(tmp_path / "src" / RELEASE_ZIP, tmp_path / "src" / "model.safetensors")
    merged = DreamSim.from_file(tmp_path / "src" / "model.safetensors").eval()
    base = DreamSim.from_state({f"{n}.{k}": v for n, sd in written["base"].items() for k, v in sd.items()}).eval()
    scaling = lora_scaling(ADAPTER_CONFIG)
    handles = []
    for i, t in enumerate(TOWERS):
        for j, blk in enumerate(base.towers[t.name].blocks):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv"
            a, b = written["adapter"][f"{key}.lora_A.weight"], written["adapter"][f"{key}.lora_B.weight"]
            handles.append(blk.attn.qkv.register_forward_hook(
                lambda _m, inp, out, a=a, b=b: out + scaling * F.linear(F.linear(inp[0], a), b)))
    x = torch.cat([_img(1), _img(2)])
    with torch.no_grad():
        want = base.features(x)
        for h in handles:
            h.remove()
        plain = base.features(x)
        got = merged.features(x)
    for t in TOWERS:
        assert torch.allclose(got[t.name], want[t.name], atol=1e-5, rtol=1e-4), t.name
        assert not torch.allclose(got[t.name], plain[t.name], atol=1e-3), f"{t.name}: the LoRA changed nothing"


def test_towers_match_timm_vision_transformer(release):
    """Our DINO-layout ViT equals timm's VisionTransformer on the same tensors (wiring, eps, activation, ln_pre)."""
    from timm.layers import PatchEmbed, QuickGELU
    from timm.models.vision_transformer import VisionTransformer

    root, _ = release
    ext = load_extractor("dreamsim-ensemble", "cpu", root)
    x = torch.randn(2, 3, PATCH * GRID, PATCH * GRID, generator=torch.Generator().manual_seed(3))
    for t in TOWERS:
        ours = ext.towers[t.name]
        ref = VisionTransformer(img_size=PATCH * GRID, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=2,
                                mlp_ratio=HIDDEN / WIDTH, qkv_bias=True, num_classes=0, global_pool="token",
                                pre_norm=t.projected, norm_layer=partial(nn.LayerNorm, eps=t.eps),
                                act_layer=QuickGELU if t.quick_gelu else nn.GELU,
                                embed_layer=lambda **kw: PatchEmbed(**{**kw, "bias": True})).eval()  # as DreamSim
        sd = {k: v for k, v in ours.state_dict().items() if k != "proj"}
        ref.load_state_dict(sd, strict=True)
        with torch.no_grad():
            if t.projected:
                want = ref.forward_features(x)[:, 0] @ ours.proj
            else:
                out = []
                h = ref.blocks[-1].register_forward_hook(lambda _m, _i, o: out.append(o))
                ref(x)
                h.remove()
                want = out[0][:, 0]
            assert torch.allclose(ours(x), want, atol=1e-5), t.name


def test_dreamsim_style_invariants(release):
    root, _ = release
    m = registry.create_metric("dreamsim_style", weights_dir=root)
    sha = weights.status("dreamsim-ensemble", root)["sha256"]
    assert m.info.backbone == f"dreamsim-ensemble@{sha[:12]}"
    assert not m.info.higher_is_better and m.info.range == (0.0, 200.0) and m.info.requires == {"style"}
    assert m.extractor.resolution == PATCH * GRID
    a = torch.cat([_img(1), _img(2)])
    b = torch.cat([_img(3), _img(4)])
    same = m.score(a, style=a)
    assert torch.allclose(same, torch.zeros(2), atol=1e-3), "identical images: distance 0"
    ab, ba = m.score(a, style=b), m.score(b, style=a)
    assert torch.allclose(ab, ba, atol=1e-4), "symmetric"
    assert ((ab > 0) & (ab <= 200)).all()
    g = torch.Generator().manual_seed(5)
    near = (a + 0.01 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    far = (a + 0.4 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    d_near, d_far = m.score(near, style=a), m.score(far, style=a)
    assert (d_near < d_far).all(), (d_near, d_far)
    emb = m.extractor(a)["embed"]
    assert emb.shape == (2, WIDTH + 2 * PROJ)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5) and emb.mean(-1).abs().max() < 1e-6
    assert torch.allclose(m.extractor(a[1:])["embed"], emb[1:], atol=1e-5), "batch-independent"


def test_missing_weights_name_the_fetch_command_and_both_files(tmp_path):
    with pytest.raises(weights.WeightsMissingError) as err:
        registry.create_metric("dreamsim_style", weights_dir=tmp_path)
    msg = str(err.value)
    assert "sxbench weights fetch dreamsim-ensemble" in msg and str(tmp_path / "dreamsim-ensemble") in msg
    assert f"{RELEASE_ZIP} and {DINO_FILE}" in msg and "v0.2.0-checkpoints" in msg and "dl.fbaipublicfiles.com" in msg


def test_converter_refuses_a_release_without_the_dino_backbone(tmp_path):
    write_tiny_release(tmp_path / "w" / "dreamsim-ensemble")
    (tmp_path / "w" / "dreamsim-ensemble" / DINO_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=DINO_FILE):
        weights._convert_dreamsim(tmp_path / "w" / "dreamsim-ensemble" / RELEASE_ZIP, tmp_path / "out.safetensors")
