"""Imaging inverse problems with a diffusion prior: RLSD, its variants and RED-diff baselines.

Given a measurement y = A(x*) + σ_y·n of an unknown image x*, N particles are optimised so
that each is a plausible solution under the prior (Zilberstein et al., "Repulsive Latent Score
Distillation for Solving Inverse Problems", Algorithms 1 and 2). Every method shares one loop:
for ℓ = 1..L the timestep descends, t_ℓ = T − ℓT/L (rounded, so t goes from ≈ T to 0), with

    λ_t = λ σ_t / α_t,    z_t = α_t z + σ_t ε,   ε from the keyed stream (seed, "noise", step, particle),

and the prior enters the z-step only as the *linear* term λ_t · sg[ε̂(z_t, t) − ε + γ c(t) r]ᵀ z:
ε̂ is computed under ``torch.no_grad()``, so no gradient ever flows through the UNet.

- **z-step** (all methods): minimise, w.r.t. the latents z ``[N, C, h, w]`` with Adam (lr_z),
  ``data_z(z) + Σ_i λ_t sg[…]ᵀ z_i`` where data_z is ‖x − D̃(z)‖² (augmented methods) or
  ‖y − A(D̃(z))‖² (non-augmented), backpropagated through the decoder.
- **x-step** (augmented methods only): minimise, w.r.t. the images x ``[N, 3, H, W]``,
  ``‖y − A(x)‖² + ρ̃ ‖x − sg(D̃(z))‖²``: one Adam step (lr_x, the paper's ``x_step: adam``) or,
  for linear operators, its exact minimiser (``x_step: exact``, the half-quadratic splitting
  update: the normal equations (AᵀA + ρ̃I) x = Aᵀy + ρ̃ D̃(z) solved by conjugate gradients).
  With the embedded prior one Adam step leaves hidden pixels of x lagging D̃(z) by up to lr_x;
  the z-step then pulls D̃(z) back towards that stale copy and the hidden region of an inpainting
  degrades, where the exact update keeps x = D̃(z) there (``benchmarks/bench_inverse.py``).

Ranges: the operators act on images in [−1, 1], the prior's ``decode_latents`` returns [0, 1].
x lives in [−1, 1] and D̃(z) = 2·D(z) − 1 is the decoded latent in the operators' range; the
returned particles are images in [0, 1] ((x + 1)/2 for augmented methods, D(z) otherwise).

Repulsion (``RepulsionConfig``, the same as the guidances'): r = ∇_{z_t} log Σ_j k(f(z_t^i), f(z_t^j))
with f the probe (or latent/pixel/DINOv2) features of the decoded *noisy* latent, scaled by γ
(schedulable) and c(t) = σ_t (or σ_t², 1), active only for t/T inside ``t_window``. It is added
as **+γ c(t) r** to the descent direction, which moves particles *down* the kernel density, i.e.
apart. (The paper writes "− γ∇σ_t log Σ k" with the opposite convention for the force; the
tests check that one step increases the distances between particles.) The computation is
:class:`scorestudio.guidance.repulsion.Repulsion`, shared with every guidance.

Methods (:data:`METHODS`):

=================  ==========  ==========  =============================================
method             variables   repulsion   returns
=================  ==========  ==========  =============================================
rlsd               x and z     γ           x (Algorithm 1)
hybrid             x and z     γ, first k  x; only particles < k interact (default k = N − 1)
rlsd-nonaug        z           γ           D(z) (Algorithm 2)
latent-red-diff    z           off (γ=0)   D(z): RED-diff on a latent prior
pixel-red-diff     z           off (γ=0)   D(z): RED-diff on a pixel prior (z = pixels)
=================  ==========  ==========  =============================================

``InverseSolver`` is a plain ``nn.Module`` (``solver.run(steps)`` or ``solver.step(step, steps)``);
the registered ``inverse`` system (:mod:`scorestudio.systems.inverse`) is a thin Lightning wrapper
around it. Problems (ground truth, operator, measurement) come from
:mod:`scorestudio.data.problems`, metrics from :mod:`scorestudio.metrics.restoration`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from scorestudio.data.operators import Operator
from scorestudio.guidance.repulsion import Repulsion, RepulsionConfig
from scorestudio.priors.base import DiffusionPrior
from scorestudio.utils.config import ConfigError, parse_structured
from scorestudio.utils.seeding import per_particle_randn


# --------------------------------------------------------------------------------------------
# Methods and their configuration.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """What distinguishes the solvers; they all run :class:`InverseSolver`'s loop."""

    augmented: bool                   # pixel variable x coupled to D(z) (Alg. 1) or z only (Alg. 2)
    repulsion: bool                   # use the repulsion config (False: γ = 0 whatever it says)
    hybrid: bool = False              # only the first k particles interact (k default N − 1)
    is_latent: Optional[bool] = None  # the prior kind the method is defined for (None: any)


METHODS: dict[str, Method] = {
    "rlsd": Method(augmented=True, repulsion=True),
    "hybrid": Method(augmented=True, repulsion=True, hybrid=True),
    "rlsd-nonaug": Method(augmented=False, repulsion=True),
    "latent-red-diff": Method(augmented=False, repulsion=False, is_latent=True),
    "pixel-red-diff": Method(augmented=False, repulsion=False, is_latent=False),
}
INITS = ("random", "pseudo-inverse")
X_STEPS = ("adam", "exact")


@dataclass
class SolverConfig:
    method: str = "rlsd"              # one of METHODS (see the module docstring)
    lam: float = 0.14                 # λ of λ_t = λ σ_t/α_t: weight of the prior term (box inpainting)
    rho: float = 0.075                # ρ̃ = σ_y²/ρ²: pull of x towards D(z) in the x-step (augmented methods)
    lr_x: float = 0.4                 # Adam learning rate of the images x
    lr_z: float = 0.8                 # Adam learning rate of the latents z
    betas: list = field(default_factory=lambda: [0.9, 0.99])   # Adam (β1, β2), as in the paper
    # "random": z ~ N(0, init_std² I) from the stream (seed, "init", particle), x = D̃(z);
    # "pseudo-inverse": x = clamp(A⁺(y), −1, 1) and z = E(x) for every particle.
    init: str = "random"
    init_std: float = 1.0
    # x-step of the augmented methods: "adam" (one Adam step, lr_x) or "exact" (argmin over x by
    # conjugate gradients; linear operators only). See the module docstring.
    x_step: str = "adam"
    cg_iterations: int = 30           # conjugate-gradient iterations of the exact x-step
    prompt: str = ""                  # text conditioning of ε̂ ("" = unconditional)
    repulsion: RepulsionConfig = field(default_factory=RepulsionConfig)


def check_method(cfg: SolverConfig, prior: DiffusionPrior, n_particles: int, path: str) -> Method:
    """The :class:`Method` of ``cfg.method``, after checking it fits ``prior`` and the settings."""
    if cfg.method not in METHODS:
        raise ConfigError(f"{path}.method={cfg.method!r}: expected one of {', '.join(METHODS)}")
    method = METHODS[cfg.method]
    if method.is_latent is not None and method.is_latent != prior.is_latent:
        other = "latent-red-diff" if prior.is_latent else "pixel-red-diff"
        raise ConfigError(f"{path}.method={cfg.method!r} needs a {'latent' if method.is_latent else 'pixel'} "
                          f"prior; this prior is {'latent' if prior.is_latent else 'pixel'}: use {other}")
    if cfg.init not in INITS:
        raise ConfigError(f"{path}.init={cfg.init!r}: expected one of {', '.join(INITS)}")
    if cfg.x_step not in X_STEPS:
        raise ConfigError(f"{path}.x_step={cfg.x_step!r}: expected one of {', '.join(X_STEPS)}")
    k = cfg.repulsion.kernel.interacting
    if method.hybrid and not 2 <= (n_particles - 1 if k is None else k) < n_particles:
        raise ConfigError(f"{path}.repulsion.kernel.interacting={k} with {n_particles} particles: hybrid "
                          "needs 2 ≤ k < n_particles (default k = n_particles − 1), so that some particles "
                          "interact and some do not")
    return method


# --------------------------------------------------------------------------------------------
# The solver.
# --------------------------------------------------------------------------------------------


class InverseSolver(nn.Module):
    """N particles solving ``y = A(x) + n`` with a frozen diffusion prior (module docstring).

    Args:
        cfg: :class:`SolverConfig` (or a dict of its keys).
        prior: the frozen prior; its ``image_size`` is the size of the solutions.
        operator: the forward operator A (images in [−1, 1]).
        y: the measurement ``[1, ...]`` (= ``operator.measure(x*)``).
        n_particles: N, the batch of particles.
        seed: root of the initialisation and noise streams.

    Attributes: ``z`` ``[N, C, h, w]`` latents, ``x`` ``[N, 3, H, W]`` images in [−1, 1] (None for
    non-augmented methods), ``optimizer`` (one Adam, groups "z" at lr_z and "x" at lr_x).
    """

    def __init__(self, cfg, prior: DiffusionPrior, operator: Operator, y: Tensor, n_particles: int,
                 seed: int = 0, path: str = "system.solver") -> None:
        super().__init__()
        self.cfg: SolverConfig = parse_structured(SolverConfig, cfg, path)
        self.method = check_method(self.cfg, prior, n_particles, path)
        if self.cfg.init == "pseudo-inverse" and not operator.has_pseudo_inverse:
            raise ConfigError(f"{path}.init=pseudo-inverse: {operator.name} has no pseudo-inverse; use init=random")
        if self.cfg.x_step == "exact" and self.method.augmented and not operator.is_linear:
            raise ConfigError(f"{path}.x_step=exact needs a linear operator; {operator.name} is not: "
                              "use x_step=adam or the non-augmented rlsd-nonaug")
        self.prior, self.operator = prior, operator
        self.n_particles, self.seed = n_particles, seed
        self.register_buffer("y", y.detach().clone())
        self.repulsion = self.build_repulsion(path)
        z, x = self.initial_variables()
        self.z = nn.Parameter(z)
        self.x = nn.Parameter(x) if self.method.augmented else None
        groups = [{"params": [self.z], "lr": self.cfg.lr_z, "name": "z"}]
        if self.x is not None:
            groups.append({"params": [self.x], "lr": self.cfg.lr_x, "name": "x"})
        self.optimizer = torch.optim.Adam(groups, betas=tuple(self.cfg.betas))

    # ---- set-up -------------------------------------------------------------------------------
    def build_repulsion(self, path: str) -> Optional[Repulsion]:
        """The particles' :class:`Repulsion`, or None when the method has none. Hybrid defaults
        to k = N − 1 interacting particles."""
        rep = self.cfg.repulsion
        if not self.method.repulsion:
            return None
        if self.method.hybrid and rep.kernel.interacting is None:
            rep = dataclasses.replace(rep, kernel=dataclasses.replace(rep.kernel, interacting=self.n_particles - 1))
        repulsion = Repulsion(rep, path=f"{path}.repulsion")
        repulsion.load_network(self.prior)
        return repulsion

    @torch.no_grad()
    def initial_variables(self) -> tuple[Tensor, Tensor]:
        """(z ``[N, C, h, w]``, x ``[N, 3, H, W]`` in [−1, 1]) per ``cfg.init``."""
        prior, n = self.prior, self.n_particles
        if self.cfg.init == "pseudo-inverse":
            x = self.operator.pseudo_inverse(self.y).clamp(-1, 1).expand(n, -1, -1, -1)
            return prior.encode_images((x + 1) / 2), x.clone()
        shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
        z = per_particle_randn(shape, self.seed, range(n), "init", device=prior.device) * self.cfg.init_std
        return z, self.decoded(z)

    # ---- pieces of one iteration ----------------------------------------------------------------
    @property
    def particle_ids(self) -> Tensor:
        return torch.arange(self.n_particles, device=self.z.device)

    def decoded(self, z: Tensor) -> Tensor:
        """D̃(z) = 2·D(z) − 1: latents ``[N, C, h, w]`` → images ``[N, 3, H, W]`` in [−1, 1]."""
        return 2 * self.prior.decode_latents(z) - 1

    def timestep(self, step: int, n_steps: int) -> int:
        """t_ℓ = T − ℓT/L for ℓ = step + 1 (rounded, within [0, T − 1])."""
        big_t = self.prior.num_train_timesteps
        return min(big_t - 1, max(0, round(big_t - (step + 1) * big_t / n_steps)))

    def noise(self, step: int) -> Tensor:
        """ε ``[N, C, h, w]`` of ``step``: row i from the stream (seed, "noise", step, i)."""
        return per_particle_randn(tuple(self.z.shape[1:]), self.seed, range(self.n_particles), "noise", step,
                                  device=self.z.device)

    def prior_direction(self, t: int, step: int) -> tuple[Tensor, dict[str, float]]:
        """λ_t·sg[ε̂(z_t, t) − ε + γ c(t) r] ``[N, C, h, w]`` (detached) and scalars to log.

        ε̂ runs under ``torch.no_grad()``: the UNet is never differentiated.
        """
        prior = self.prior
        ts = prior.timesteps(t, self.n_particles)
        z0, noise = self.z.detach(), self.noise(step)
        z_t = prior.add_noise(z0, noise, ts)
        with torch.no_grad():
            text = prior.encode_text([self.cfg.prompt] * self.n_particles)
            residual = prior.predict_noise(z_t, ts, text) - noise
        logs = {}
        if self.repulsion is not None:
            rep = self.repulsion(prior, self.repulsion.latent_source(z_t, z0), ts, self.particle_ids, step)
            if rep is not None:
                residual = residual + rep
                logs["repulsion_norm"] = float(rep.flatten(1).norm(dim=1).mean())
        lam_t = self.cfg.lam * prior.sigma(ts) / prior.alpha(ts)
        logs["lambda_t"] = float(lam_t[0])
        return lam_t.view(-1, 1, 1, 1) * residual, logs

    def z_loss(self, t: int, step: int) -> tuple[Tensor, dict[str, float]]:
        """data_z(z) + Σ_i sg[prior direction]ᵀ z_i, differentiable w.r.t. ``z`` only."""
        direction, logs = self.prior_direction(t, step)
        image = self.decoded(self.z)
        if self.x is not None:
            data = (self.x.detach() - image).pow(2).sum()
        else:
            data = (self.y - self.operator(image)).pow(2).sum()
        logs["loss_z_data"] = float(data.detach())
        return data + (direction * self.z).sum(), logs

    def x_loss(self) -> tuple[Tensor, dict[str, float]]:
        """‖y − A(x)‖² + ρ̃‖x − sg(D̃(z))‖² summed over particles, differentiable w.r.t. ``x``."""
        with torch.no_grad():
            target = self.decoded(self.z)
        data = (self.y - self.operator(self.x)).pow(2).sum()
        coupling = (self.x - target).pow(2).sum()
        logs = {"loss_x_data": float(data.detach()), "loss_x_coupling": float(coupling.detach())}
        return data + self.cfg.rho * coupling, logs

    def descend(self, loss: Tensor) -> None:
        """One Adam step on whichever variable ``loss`` depends on (the other has no gradient)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def z_step(self, t: int, step: int) -> dict[str, float]:
        """Update z (Algorithm 1 lines 3–7, Algorithm 2): one Adam step on :meth:`z_loss`."""
        loss, logs = self.z_loss(t, step)
        self.descend(loss)
        return logs

    def x_step(self) -> dict[str, float]:
        """Update x (Algorithm 1 lines 8–9): one Adam step on :meth:`x_loss`, or its exact minimiser."""
        if self.cfg.x_step == "exact":
            with torch.no_grad():
                target = self.decoded(self.z)
            self.x.data.copy_(self.exact_x(target))
            loss, logs = self.x_loss()
        else:
            loss, logs = self.x_loss()
            self.descend(loss)
        with torch.no_grad():   # images live in [−1, 1]: outside it D̃(z) (clamped) cannot follow x
            self.x.clamp_(-1.0, 1.0)
        return logs

    def exact_x(self, target: Tensor) -> Tensor:
        """argmin_x ‖y − A(x)‖² + ρ̃‖x − target‖² ``[N, 3, H, W]`` for a linear A: conjugate
        gradients on (AᵀA + ρ̃I) x = Aᵀy + ρ̃·target, warm-started at the current x. Aᵀ is the
        vector–Jacobian product of A (exact for a linear operator)."""
        rho = self.cfg.rho
        probe = torch.zeros_like(target, requires_grad=True)
        with torch.enable_grad():
            a_probe = self.operator(probe)

        def adjoint(v: Tensor) -> Tensor:
            return torch.autograd.grad(a_probe, probe, v, retain_graph=True)[0]

        def normal(v: Tensor) -> Tensor:
            return adjoint(self.operator(v)) + rho * v

        y = self.y.expand_as(a_probe)
        x = self.x.detach().clone()
        residual = adjoint(y) + rho * target - normal(x)
        direction, norm = residual.clone(), residual.pow(2).sum()
        for _ in range(self.cfg.cg_iterations):
            if norm <= 1e-12 * target.numel():
                break
            step_dir = normal(direction)
            alpha = norm / direction.mul(step_dir).sum()
            x += alpha * direction
            residual -= alpha * step_dir
            new_norm = residual.pow(2).sum()
            direction = residual + (new_norm / norm) * direction
            norm = new_norm
        return x

    # ---- the loop -------------------------------------------------------------------------------
    def step(self, step: int, n_steps: int) -> dict[str, float]:
        """Iteration ℓ = step + 1 of L = ``n_steps``: the z-step, then (augmented) the x-step."""
        t = self.timestep(step, n_steps)
        logs = self.z_step(t, step)
        if self.x is not None:
            logs.update(self.x_step())
        return {"t": float(t), **logs}

    def run(self, n_steps: int, callback: Optional[Callable[[int, "InverseSolver"], None]] = None) -> Tensor:
        """All ``n_steps`` iterations (``callback(step, solver)`` after each); returns :meth:`images`."""
        for step in range(n_steps):
            self.step(step, n_steps)
            if callback is not None:
                callback(step, self)
        return self.images()

    @torch.no_grad()
    def images(self) -> Tensor:
        """The particles as images ``[N, 3, H, W]`` in [0, 1]: (x + 1)/2 or D(z)."""
        if self.x is not None:
            return ((self.x + 1) / 2).clamp(0, 1)
        return self.prior.decode_latents(self.z)
