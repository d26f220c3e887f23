"""The MoE-LoRA layer: grouped active-expert path vs a loop over all experts vs the bare frozen linear.

CPU cases use small widths; ``gpu`` cases the Flux widths (3072 → 3072 and 3072 → 12288, 4096–8192 tokens)
in bfloat16. The loop is the naive implementation the grouped path replaces: every expert applied to every
token, weighted by the routing (zeros for the unselected).
"""

from __future__ import annotations

import pytest
import torch
from conftest import run

from styleexpert.moe import MoELoRALinear


def loop_over_experts(layer: MoELoRALinear, x: torch.Tensor) -> torch.Tensor:
    """All E experts on all tokens, then the routing weights: what the grouped path avoids."""
    m, routing = layer.lora_layer, layer.routing
    b = x.shape[0]
    dense = torch.zeros(b, m.num_experts, device=x.device, dtype=torch.float32)
    dense.scatter_(1, routing.indices, routing.weights.float())
    out = layer.base(x) + layer.scale * (x @ m.shared_A[0].T) @ m.shared_B[0].T
    for e in range(m.num_experts):
        out = out + layer.scale * dense[:, e].view(b, 1, 1).to(x.dtype) * ((x @ m.loraA[e].T) @ m.loraB[e].T)
    return out


def _layer(cin: int, cout: int, experts: int, k: int, r: int, device: torch.device, dtype: torch.dtype) -> MoELoRALinear:
    torch.manual_seed(0)
    base = torch.nn.Linear(cin, cout, device=device, dtype=dtype)
    layer = MoELoRALinear(base, cond_dim=64, num_experts=experts, rank=r, top_k=k)
    torch.nn.init.normal_(layer.lora_layer.loraB, std=0.01)
    torch.nn.init.normal_(layer.lora_layer.shared_B, std=0.01)
    layer.set_condition(torch.randn(2, 64, device=device, dtype=dtype))
    return layer


CPU = [(256, 256, 1024, 16, 2, 8), (256, 1024, 1024, 16, 2, 8), (256, 256, 1024, 8, 2, 8), (256, 256, 1024, 16, 2, 16)]
GPU = [(3072, 3072, 4096, 16, 2, 8), (3072, 12288, 4096, 16, 2, 8), (3072, 3072, 8192, 16, 2, 8),
       (3072, 12288, 8192, 16, 2, 8)]


def _cases(shapes, marks=()):
    return [pytest.param(*s, path, marks=marks, id=f"{s[0]}x{s[1]}-T{s[2]}-E{s[3]}k{s[4]}r{s[5]}-{path}")
            for s in shapes for path in ("grouped", "loop", "bare")]


@pytest.mark.parametrize(("cin", "cout", "tokens", "experts", "k", "r", "path"),
                         _cases(CPU) + _cases(GPU, marks=pytest.mark.gpu))
def test_moe_layer(benchmark, device, cin, cout, tokens, experts, k, r, path):
    gpu_case = cin >= 3072
    dtype = torch.bfloat16 if gpu_case else torch.float32
    layer = _layer(cin, cout, experts, k, r, device, dtype)
    x = torch.randn(2, tokens, cin, device=device, dtype=dtype)
    fn = {"grouped": lambda: layer(x), "loop": lambda: loop_over_experts(layer, x), "bare": lambda: layer.base(x)}[path]
    if path == "loop":  # the two paths compute the same function
        with torch.inference_mode():
            torch.testing.assert_close(loop_over_experts(layer, x), layer(x), rtol=2e-2, atol=2e-2)
    run(benchmark, fn, device, rounds=5 if not gpu_case else 20, group=f"moe-layer {cin}x{cout} T{tokens} E{experts}k{k}r{r}",
        path=path, dtype=str(dtype), batch=2, tokens=tokens, in_features=cin, out_features=cout, experts=experts,
        top_k=k, rank=r)
