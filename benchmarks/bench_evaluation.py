"""Per-image scoring against the backbones it cannot avoid: how much does evaluation cost beyond the forwards?

One run, one set of images: the 56 ``synth-lite`` pairs stylized by ``reinhard`` (every output differs from its
references), scored with the protocol's default metrics (weight-free and pretrained, the set metrics' Inception
features included) by a fresh ``sxbench.evaluation.Evaluator`` in the runner's batches of 8, references not
yet computed (``scoring_s``); then the same images through each backbone the evaluator plans, once per
(backbone, role) and distinct image, in its batches of 4 (``forward_s``, the sum). ``ratio = scoring_s /
forward_s``: 1 would mean the metrics, the image handling and the caches cost nothing.

Run: ``python -m pytest benchmarks/bench_evaluation.py -o python_files=bench_*.py --benchmark-only -s``
(needs ``sxbench weights fetch default``; skipped, saying so, without it).
"""

from __future__ import annotations

import time

import pytest
import torch

from sxbench import registry, weights
from sxbench.evaluation import FEATURE_BATCH, Evaluator, Item
from sxbench.features import image_key
from sxbench.imageio import to_pil, to_tensor


def _workload():
    protocol = registry.create_protocol("synth-lite")
    pairs = protocol.spec.pairs
    method = registry.create_method("reinhard")
    outs = []
    for i in range(0, len(pairs), 8):
        chunk = pairs[i : i + 8]
        outs += [to_pil(o) for o in method.stylize_batch([protocol.content(p.content_id) for p in chunk],
                                                         [protocol.style(p.style_id) for p in chunk],
                                                         seeds=[0] * len(chunk))]
    return protocol, pairs, [Item(f"bench-{i}", p, o) for i, (p, o) in enumerate(zip(pairs, outs))]


def _forward_seconds(ev: Evaluator, items: list[Item]) -> dict[str, float]:
    """Seconds of each (backbone, role) forward over the distinct images of that role, batches of 4."""
    size = ev.protocol.spec.resolution
    images = {"output": [it.image for it in items],
              "content": [ev.protocol.content(it.pair.content_id) for it in items],
              "style": [ev.protocol.style(it.pair.style_id).resize((size, size)) if ev.protocol.style(it.pair.style_id).size != (size, size)
                        else ev.protocol.style(it.pair.style_id) for it in items]}
    out: dict[str, float] = {}
    for e in ev._plan:
        ext, role = e["ext"], e["role"]
        distinct = list({image_key(im): im for im in images[role]}.values())
        x = to_tensor(distinct)
        with torch.no_grad():
            ext(x[:FEATURE_BATCH])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(x), FEATURE_BATCH):
                ext(x[i : i + FEATURE_BATCH])
            out[f"{ext.backbone}:{role}"] = time.perf_counter() - t0
    return out


def test_scoring_against_backbone_forwards(benchmark):
    protocol, pairs, items = _workload()
    try:
        Evaluator(protocol, pairs, (0,), progress=False)
    except weights.WeightsMissingError as exc:
        pytest.skip(str(exc))
    probe = Evaluator(protocol, pairs, (0,), progress=False)
    if probe.skipped:
        pytest.skip("default metrics not all available: " + "; ".join(probe.skipped))
    forwards = _forward_seconds(probe, items)

    def score() -> None:
        ev = Evaluator(protocol, pairs, (0,), progress=False)  # fresh cache: references computed too
        with torch.no_grad():
            for i in range(0, len(items), 8):
                ev.score(items[i : i + 8])

    t0 = time.perf_counter()
    benchmark.pedantic(score, rounds=1, iterations=1)
    scoring = time.perf_counter() - t0
    forward = sum(forwards.values())
    benchmark.group = "evaluation: scoring vs backbone forwards (synth-lite, 56 outputs)"
    benchmark.extra_info.update({"images": len(items), "scoring_s": scoring, "forward_s": forward,
                                 "ratio": scoring / forward, "forwards": forwards,
                                 "metrics": [m.info.name for m in probe.metrics if m.info.scope != "experts"],
                                 "device": "cpu", "threads": torch.get_num_threads()})
    print(f"\nscoring {scoring:.2f} s, backbone forwards {forward:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in forwards.items())}), "
          f"ratio {scoring / forward:.2f}")
