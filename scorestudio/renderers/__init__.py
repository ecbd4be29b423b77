"""Differentiable renderers that turn a generator's parameters into images (``svg``: vector graphics, ``nerf``: radiance fields)."""
