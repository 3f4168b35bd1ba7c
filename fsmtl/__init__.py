"""fsmtl: high-throughput multi-task learning for few-shot image classification.

The stages live in the top-level packages ``preprocess``, ``pipelines``, ``models``, ``train``,
``eval`` and ``benchmarks``; this package holds the ``fsmtl`` command line and the few helpers
every stage shares (errors, atomic file writes, machine description).
"""

__version__ = "0.1.0"
