"""sxbench: an evaluation suite for image-stylization methods.

Factories: ``sxbench.registry.create_method``, ``create_metric``, ``create_protocol``; the runner is
``sxbench.runner.run``; the command line is ``sxbench``.
"""

__version__ = "0.1.0"
