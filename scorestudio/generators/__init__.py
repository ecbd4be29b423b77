"""Generators: the particles a distillation system optimises and how to render them (see ``base``)."""
