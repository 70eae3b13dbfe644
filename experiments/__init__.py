"""Cross-lingual transfer experiments with sftkit (NusaX sentiment, AmericasNLI).

Run ``python -m experiments.xling --help``; the protocol, the presets and their budget are in
``docs/results.md``. Modules: :mod:`experiments.datasets` (data layout, leakage filter),
:mod:`experiments.presets` (smoke / default / full), :mod:`experiments.xling` (the resumable runner
and CLI), :mod:`experiments.report` (tables, JSON, plots).
"""
