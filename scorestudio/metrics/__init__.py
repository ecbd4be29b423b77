"""Metrics on generated images: the probe classifier and ``diversity`` (:mod:`.probe`), feature
networks for the repulsion kernel (:mod:`.features`) and prompt-attribute scores (:mod:`.attributes`).

Submodules are imported explicitly, e.g. ``from scorestudio.metrics.probe import load_probe``.
"""
