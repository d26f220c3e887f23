"""MoE-LoRA layer: routing, grouped computation, released weighting, merging."""

import copy

import pytest
import torch
import torch.nn as nn

from styleexpert.moe import LoRALinear, MoELoRALinear

E, R, K, COND = 6, 3, 2, 10


def make_layer(dtype=torch.float64, compat=False, seed=0, in_f=7, out_f=5, bias=True):
    torch.manual_seed(seed)
    layer = MoELoRALinear(nn.Linear(in_f, out_f, bias=bias, dtype=dtype), COND, E, R, K, 16.0, compat)
    with torch.no_grad():  # non-zero B so every expert matters
        layer.lora_layer.loraB.normal_()
        layer.lora_layer.shared_B.normal_()
    return layer


def naive_all_experts(layer, x, cond):
    """Independent reference: dense weights over all E experts, a loop over every expert."""
    m = layer.lora_layer
    logits = cond @ m.cond_gate.weight.T
    top, idx = torch.topk(logits, m.top_k, dim=-1)
    dense = torch.zeros_like(logits).scatter(1, idx, torch.softmax(top, -1))
    out = layer.base(x)
    scale = m.alpha / m.rank
    for b in range(x.shape[0]):
        delta = m.shared_B[0] @ m.shared_A[0] @ x[b].T
        for e in range(m.num_experts):
            delta = delta + dense[b, e] * (m.loraB[e] @ m.loraA[e] @ x[b].T)
        out[b] = out[b] + scale * delta.T
    return out


def released_reference(layer, x, cond):
    """Independent re-implementation of the released param_CondLoRAMoELayer weighting."""
    m = layer.lora_layer
    logits = cond @ m.cond_gate.weight.T
    top, idx = torch.topk(logits, m.top_k, dim=-1)
    scores = torch.cat([torch.softmax(top, -1), torch.zeros(x.shape[0], 1, dtype=x.dtype)], 1)  # padded at the end
    out = layer.base(x)
    for b in range(x.shape[0]):
        As = torch.cat([m.shared_A, m.loraA[idx[b]]])  # shared stacked first
        Bs = torch.cat([m.shared_B, m.loraB[idx[b]]])
        delta = sum(scores[b, j] * (Bs[j] @ As[j] @ x[b].T) for j in range(m.top_k + 1))
        out[b] = out[b] + (16 // m.rank) * delta.T
    return out


def test_shapes_and_two_dimensional_inputs():
    layer = make_layer(torch.float32)
    cond = torch.randn(3, COND)
    layer.set_condition(cond)
    assert layer(torch.randn(3, 11, 7)).shape == (3, 11, 5)
    assert layer(torch.randn(3, 7)).shape == (3, 5)  # AdaLN modulation linears see (B, D)
    assert layer(torch.randn(3, 2, 4, 7)).shape == (3, 2, 4, 5)
    with pytest.raises(ValueError, match="batch"):
        layer(torch.randn(2, 4, 7))
    with pytest.raises(RuntimeError, match="set_condition"):
        make_layer()(torch.randn(1, 7, dtype=torch.float64))


def test_exactly_k_experts_active_and_weights_sum_to_one():
    layer = make_layer()
    cond, x = torch.randn(4, COND, dtype=torch.float64), torch.randn(4, 9, 7, dtype=torch.float64)
    layer.set_condition(cond)
    r = layer.routing
    assert r.indices.shape == (4, K) and r.weights.shape == (4, K)
    assert all(len(set(row.tolist())) == K for row in r.indices)
    torch.testing.assert_close(r.weights.sum(1), torch.ones(4, dtype=r.weights.dtype))
    before = layer(x)
    layer.set_condition(None)  # holds no graph tensors, so it can be copied
    for b in range(4):  # zeroing an unselected expert changes nothing; a selected one changes sample b
        unselected = next(e for e in range(E) if e not in r.indices[b])
        probe = copy.deepcopy(layer)
        with torch.no_grad():
            probe.lora_layer.loraB[unselected] = 0
        probe.set_condition(cond)
        torch.testing.assert_close(probe(x)[b], before[b])
        probe = copy.deepcopy(layer)
        with torch.no_grad():
            probe.lora_layer.loraB[r.indices[b, 0]] = 0
        probe.set_condition(cond)
        assert not torch.allclose(probe(x)[b], before[b])


def test_shared_expert_always_contributes():
    layer = make_layer()
    with torch.no_grad():
        layer.lora_layer.loraB.zero_()
    cond, x = torch.randn(5, COND, dtype=torch.float64), torch.randn(5, 3, 7, dtype=torch.float64)
    layer.set_condition(cond)
    diff = (layer(x) - layer.base(x)).abs().flatten(1).amax(1)
    assert (diff > 1e-6).all()


def test_zero_b_equals_base():
    torch.manual_seed(1)
    layer = MoELoRALinear(nn.Linear(7, 5), COND, E, R, K)  # fresh init: B = 0
    assert layer.lora_layer.loraA.std() > 0
    layer.set_condition(torch.randn(2, COND))
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(layer(x), layer.base(x), atol=1e-6, rtol=0)


def test_grouped_equals_naive_loop_over_all_experts():
    layer = make_layer()
    cond, x = torch.randn(4, COND, dtype=torch.float64), torch.randn(4, 6, 7, dtype=torch.float64)
    layer.set_condition(cond)
    torch.testing.assert_close(layer(x), naive_all_experts(layer, x, cond), atol=1e-5, rtol=1e-5)


def test_released_compat_reproduces_released_weighting():
    layer = make_layer(compat=True)
    cond, x = torch.randn(4, COND, dtype=torch.float64), torch.randn(4, 6, 7, dtype=torch.float64)
    layer.set_condition(cond)
    torch.testing.assert_close(layer(x), released_reference(layer, x, cond), atol=1e-9, rtol=1e-9)
    paper = make_layer(compat=False)
    paper.set_condition(cond)
    assert not torch.allclose(paper(x), layer(x))


def test_merged_equals_unmerged_and_unmerge_restores():
    layer = make_layer()
    cond = torch.randn(1, COND, dtype=torch.float64).expand(3, -1)
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    w0 = layer.base.weight.clone()
    layer.set_condition(cond)
    ref = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), ref, atol=1e-10, rtol=1e-10)
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0)
    layer.set_condition(torch.randn(3, COND, dtype=torch.float64))
    with pytest.raises(ValueError, match="one style"):
        layer.merge()


def test_routing_is_per_image_not_per_token():
    """Each image's experts and weights come from its style embedding alone: every token of image b, however
    different, goes through the same matrix M_b = W + scale · (B_s A_s + Σ_i w_bi B_i A_i), built here by hand
    from that image's top-k of the router on its embedding. Per-token routing (on hidden states) fails this."""
    layer = make_layer()
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(3, COND, generator=g, dtype=torch.float64)
    m = layer.lora_layer
    logits = cond @ m.cond_gate.weight.T
    top, idx = torch.topk(logits, K, dim=-1)
    assert len({tuple(sorted(row.tolist())) for row in idx}) == 3, "the three images route to different experts"
    # tokens of wildly different scale and sign, and the same tokens in every image
    magnitudes = torch.logspace(-3, 3, 8, dtype=torch.float64).view(1, 8, 1)
    tokens = torch.randn(1, 8, 7, generator=g, dtype=torch.float64) * magnitudes
    tokens = torch.cat([tokens, -tokens], 1).expand(3, -1, -1)
    layer.set_condition(cond)
    out = layer(tokens)
    assert torch.equal(layer.routing.indices, idx)
    scale = m.alpha / m.rank
    for b in range(3):
        w = torch.softmax(top[b], -1)
        M = layer.base.weight + scale * (m.shared_B[0] @ m.shared_A[0]
                                         + sum(w[j] * m.loraB[idx[b, j]] @ m.loraA[idx[b, j]] for j in range(K)))
        torch.testing.assert_close(out[b], tokens[b] @ M.T + layer.base.bias, rtol=1e-10, atol=1e-9)
    # the same tokens in different images give different outputs: the routing is the image's
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    # and another batch of tokens leaves each image's routing untouched
    layer(torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 1e4)
    assert torch.equal(layer.routing.indices, idx) and torch.equal(layer.routing.weights, torch.softmax(top, -1))


def test_only_adapters_train():
    layer = make_layer(torch.float32)
    layer.set_condition(torch.randn(2, COND))
    layer(torch.randn(2, 3, 7)).sum().backward()
    assert layer.base.weight.grad is None
    m = layer.lora_layer
    assert m.loraA.grad is not None and m.cond_gate.weight.grad is not None
    assert (m.loraB.grad.flatten(1).abs().sum(1) > 0).sum() <= 2 * K  # only the selected experts get gradients


def test_single_lora_layer():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    lora = LoRALinear(lin, rank=4)
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(lora(x), lin(x))
    with torch.no_grad():
        lora.lora_B.normal_()
    ref = lin(x) + (lora.alpha / 4) * (x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora(x), ref)
