"""The report at scale: a synthesized store of 20,000 samples rendered by ``sxbench.report.render``.

The store: 10 method configurations (8 ranked, 2 controls) × 1,000 pairs (100 contents × 100 styles drawn
without a pattern, 4 levels, seen and unseen) × 2 seeds, 8 image metrics in the fidelity, style and detail groups,
with method, style and content effects plus noise, so intervals and rank groups have real work to do. Each
method's outputs point at one small PNG of its own (the render reads file listings, never pixels, except the
grid's thumbnails).

Measured: the render's wall time (the budget is 60 s on 2 cores), ``index.html``'s size (budget 2 MB: per-sample
data lives in ``data/``, loaded by the page on demand) and ``data/``'s size.

Run: ``python -m pytest benchmarks/bench_report.py -o python_files=bench_*.py --benchmark-only -s``
(or ``python benchmarks/bench_report.py [N_SAMPLES]``, which prints the same line).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import render
from sxbench.store import Store

METHODS = [f"method{i}" for i in range(8)] + ["identity", "stylecopy"]
METRICS = {"content_ssim": (True, "fidelity"), "dino_content": (True, "fidelity"), "content_edge_f1": (True, "fidelity"),
           "vgg_gram_style": (False, "style"), "style_color_swd": (False, "style"), "target_ssim": (True, "detail"),
           "target_psnr": (True, "detail"), "target_detail": (False, "detail")}
LEVELS = ("color", "texture", "material", "stroke")


def synthesize(run: Path, n_samples: int = 20_000, seeds: int = 2) -> int:
    """Write a store of about ``n_samples`` samples into ``run``; returns the number written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    n_pairs = n_samples // (len(METHODS) * seeds)
    styles, contents = max(n_pairs // 10, 1), max(n_pairs // 10, 1)
    pairs = [(int(rng.integers(styles)), int(rng.integers(contents))) for _ in range(n_pairs)]
    s_eff, c_eff = rng.normal(0, 0.1, styles), rng.normal(0, 0.05, contents)
    m_eff = {m: rng.normal(0, 0.05) for m in METHODS}
    written = 0
    with Store(run) as st:
        infos = {m: MethodInfo(m, "1", control=m in ("identity", "stylecopy")) for m in METHODS}
        for metric, (hib, group) in METRICS.items():
            st.register_metric(MetricInfo(metric, hib, (-10.0, 100.0), group, frozenset({"content"}),
                                          description=f"synthetic {metric}"))
        for info in infos.values():
            st.register_method(info)
        run_id = st.begin_run("scale", {"protocol": "scale", "seeds": list(range(seeds))}, {})
        for m, info in infos.items():
            out = f"images/{m}/out.png"
            (run / out).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), tuple(int(x) for x in rng.integers(0, 255, 3))).save(run / out)
            rows, values = [], []
            for i, (s, c) in enumerate(pairs):
                pair = f"c{c}__s{s}__{i}"
                for seed in range(seeds):
                    key = f"{m}:{pair}:{seed}"
                    base = 0.5 + s_eff[s] + c_eff[c] + m_eff[m] + rng.normal(0, 0.05)
                    rows.append(SampleRecord(key, run_id, m, info.config_hash, "scale", "1", pair, f"c{c}", f"s{s}",
                                             seed, "unseen" if s % 4 == 0 else "seen", LEVELS[s % 4], f"fam{s % 12}",
                                             "ok", None, out, 0.01, 1, 1, "cpu_rss", "cpu"))
                    values += [MetricValue(key, metric, float(base if hib else 1 - base), hib, group, "1", None)
                               for metric, (hib, group) in METRICS.items()]
            with st._transaction():  # one transaction per method (write_sample commits each sample: minutes)
                st.conn.executemany(
                    "INSERT OR REPLACE INTO samples (sample_key, run_id, method, method_config, protocol, "
                    "protocol_version, pair_id, content_id, style_id, seed, split, level, family, status, error, "
                    "output_path, latency_s, batch_size, peak_memory_bytes, memory_kind, device, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.sample_key, r.run_id, r.method, r.method_config, r.protocol, r.protocol_version, r.pair_id,
                      r.content_id, r.style_id, r.seed, r.split, r.level, r.family, r.status, r.error, r.output_path,
                      r.latency_s, r.batch_size, r.peak_memory_bytes, r.memory_kind, r.device, time.time())
                     for r in rows])
                st._insert_values(values)
            written += len(rows)
        st.finish_run(run_id)
    return written


def measure(n_samples: int = 20_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        n = synthesize(run, n_samples)
        t = time.perf_counter()
        render(run)
        seconds = time.perf_counter() - t
        data = sum(f.stat().st_size for f in (run / "data").glob("*.js"))
        return {"samples": n, "render_s": seconds, "index_mb": (run / "index.html").stat().st_size / 2**20,
                "data_mb": data / 2**20}


def test_report_scale(benchmark):
    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nreport at scale: {result}")


if __name__ == "__main__":
    r = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
    print(f"{r['samples']} samples: render {r['render_s']:.1f} s, index.html {r['index_mb']:.2f} MB, "
          f"data/ {r['data_mb']:.2f} MB")
