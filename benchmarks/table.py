"""pytest-benchmark JSON → a Markdown table with the ratios people ask for.

``python benchmarks/table.py reports/bench/cpu.json [-o reports/bench/cpu.md]``. Ratios: in each MoE-layer
group, the loop over all experts and the bare linear against the grouped path; in each transformer-step group,
every variant against the bare transformer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sxbench.report.bench import markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("-o", "--output", default=None)
    args = p.parse_args(argv)
    text = markdown(json.loads(Path(args.json).read_text()))
    if args.output:
        Path(args.output).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
