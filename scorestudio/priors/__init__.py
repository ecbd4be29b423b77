"""Text-to-image diffusion priors behind one interface (:class:`base.DiffusionPrior`).

Registered names (imported lazily by ``scorestudio.find``): ``stable-diffusion``,
``deepfloyd-if``, ``embedded`` (the small prior shipped with scorestudio) and
``prompt-processor``. Nothing heavy is imported here.
"""
