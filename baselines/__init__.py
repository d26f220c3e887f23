"""Baseline stylization methods, one file each, registered through the ``sxbench.methods`` entry points."""
