"""Solvers that use a frozen diffusion prior without a generator: RLSD for imaging inverse
problems (:mod:`.rlsd`) and DDIM sampling with optional particle repulsion (:mod:`.ddim`).

Submodules are imported explicitly, e.g. ``from scorestudio.solvers.rlsd import InverseSolver``.
"""
