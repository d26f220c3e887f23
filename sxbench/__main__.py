"""``python -m sxbench`` (what ``accelerate launch -m sxbench train …`` runs on every process)."""

import sys

from sxbench.cli import main

sys.exit(main())
