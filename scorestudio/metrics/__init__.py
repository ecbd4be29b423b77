"""Metrics on generated images: the probe classifier, its features and the diversity score.

Imported lazily: ``from scorestudio.metrics.probe import load_probe, diversity``.
"""
