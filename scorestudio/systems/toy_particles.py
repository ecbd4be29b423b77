"""toy-particles: score distillation of 2-D particles towards a Gaussian mixture, ± repulsion.

Reproduces the bimodal toy of the RSD/RLSD papers (appendix "Toy example with a bimodal
Gaussian distribution"): target 0.5·N([1,0], 0.005 I) + 0.5·N([-1,0], 0.005 I), ensembles of
N = 2 Dirac particles, many independent realizations, swept over the repulsion weight γ. The
diffused target is again a Gaussian mixture, so its noise prediction is exact:

    p_t = Σ_k π_k N(α_t μ_k, v_t I),   v_t = α_t² s² + σ_t²,   ε̂(x_t, t) = −σ_t ∇ log p_t(x_t).

Each step a particle θ gets the SDS gradient w(t)(ε̂(α_t θ + σ_t ε, t) − ε) plus the repulsion
γ ∇_θ log Σ_j k(θ, θ_j) of :mod:`scorestudio.guidance.repulsion`. All γ values and realizations
run as one batch ``[G, R, N, 2]`` and share their random draws (common random numbers), so the
differences between γ values come from the repulsion alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scorestudio.guidance.repulsion import KernelConfig, kernel_log_density_grad
from scorestudio.guidance.schedule import alpha_sigma, ddpm_alphas_cumprod, timestep_weight
from scorestudio.systems.base import BaseSystem, OptimizerConfig
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.registry import register


def mixture_noise_prediction(x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                             means: torch.Tensor, variance: float) -> torch.Tensor:
    """Exact ε̂(x_t, t) = −σ_t ∇ log p_t(x_t) of an equal-weight isotropic Gaussian mixture.

    Args:
        x_t: ``[..., D]`` noisy points; alpha, sigma: ``[...]`` per point.
        means: ``[K, D]`` clean component means; variance: clean per-axis variance s².
    """
    a, s = alpha[..., None, None], sigma[..., None, None]
    v = a**2 * variance + s**2                                   # [..., 1, 1]
    diff = x_t[..., None, :] - a * means                         # [..., K, D]
    logits = -(diff**2).sum(-1, keepdim=True) / (2 * v)          # [..., K, 1] (equal weights)
    resp = torch.softmax(logits, dim=-2)
    score = -(resp * diff / v).sum(-2)                           # ∇ log p_t, [..., D]
    return -sigma[..., None] * score


@register("toy-particles")
class ToyParticlesSystem(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        n_particles: int = 2                     # particles per ensemble (the repulsion couples these)
        n_realizations: int = 200                # independent ensembles, run as one batch
        gammas: list = field(default_factory=lambda: [0.0, 1.0, 10.0, 100.0, 2000.0])  # repulsion weights swept in one run
        mode_means: list = field(default_factory=lambda: [[1.0, 0.0], [-1.0, 0.0]])
        mode_variance: float = 0.005             # per-axis variance s² of each mixture component
        init_std: float = 0.5                    # particles start at N(0, init_std² I)
        # t ~ U[min, max]·T. Annealing the upper bound from high to low noise lets particles
        # first see the smoothed (unimodal) target, then settle into the modes.
        min_step_percent: ScheduledFloat = schedulable(0.02)
        max_step_percent: ScheduledFloat = schedulable((0, 0.5, 0.05, 300))
        weighting: str = "uniform"               # w(t): sds (1 − ᾱ), uniform, fantasia3d
        kernel: KernelConfig = field(default_factory=KernelConfig)
        record_every: int = 5                    # store particle positions every k steps for the path plot
        max_recorded: int = 200                  # capacity of the path buffer (recordings)
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="SGD", args={"lr": 0.05}))

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.n_realizations < 1 or not cfg.gammas:
            raise ConfigError("toy-particles needs system.n_realizations ≥ 1 and at least one value in system.gammas")
        self.register_buffer("gammas", torch.tensor(cfg.gammas, dtype=torch.float32))
        self.register_buffer("means", torch.tensor(cfg.mode_means, dtype=torch.float32))
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod(1000, 1e-4, 0.02, "linear"))
        init = torch.stack([
            torch.randn(cfg.n_particles, 2, generator=self.random_stream("init", r)) * cfg.init_std
            for r in range(cfg.n_realizations)
        ])                                                       # [R, N, 2]
        g = len(cfg.gammas)
        self.particles = torch.nn.Parameter(init.expand(g, -1, -1, -1).clone())  # [G, R, N, 2]
        self.register_buffer("paths", torch.zeros(cfg.max_recorded, *self.particles.shape))
        self.register_buffer("n_recorded", torch.zeros((), dtype=torch.long))

    # ---- one step ---------------------------------------------------------------------------
    def _draws(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps ``[R, N]`` and noise ``[R, N, 2]`` for this step, one stream per realization."""
        cfg, t_max = self.cfg, len(self.alphas_cumprod)
        lo = int(cfg.min_step_percent.at(step) * t_max)
        hi = max(lo, int(cfg.max_step_percent.at(step) * t_max))
        ts, eps = [], []
        for r in range(cfg.n_realizations):
            gen = self.random_stream("step", r, step)
            ts.append(torch.randint(lo, hi + 1, (cfg.n_particles,), generator=gen))
            eps.append(torch.randn(cfg.n_particles, 2, generator=gen))
        return torch.stack(ts).to(self.device), torch.stack(eps).to(self.device)

    def distillation_gradient(self, step: int) -> torch.Tensor:
        """SDS gradient + γ·repulsion for every particle, ``[G, R, N, 2]`` (no autograd)."""
        theta = self.particles.detach()
        t, eps = self._draws(step)
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t)       # [R, N]
        x_t = alpha[..., None] * theta + sigma[..., None] * eps
        eps_hat = mixture_noise_prediction(x_t, alpha, sigma, self.means, self.cfg.mode_variance)
        w = timestep_weight(self.alphas_cumprod, t, self.cfg.weighting)[..., None]
        repulse = kernel_log_density_grad(theta, **self.cfg.kernel.kwargs())
        return w * (eps_hat - eps) + self.gammas[:, None, None, None] * repulse

    def training_step(self, batch, batch_idx):
        grad = self.distillation_gradient(self.global_step)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        # ½‖θ − sg(θ − g)‖² has ∂/∂θ = g: the optimiser sees exactly the distillation gradient.
        target = (self.particles - grad).detach()
        loss = 0.5 * (self.particles - target).pow(2).sum()
        self._record(self.global_step)
        stats = self.ensemble_stats()
        self.log("loss", loss / self.particles[..., 0].numel(), prog_bar=True)
        self.log("collapse_g0", stats["collapse"][0], prog_bar=True)
        self.log("collapse_glast", stats["collapse"][-1], prog_bar=True)
        return loss

    def _record(self, step: int) -> None:
        if step % self.cfg.record_every == 0 and int(self.n_recorded) < self.cfg.max_recorded:
            self.paths[int(self.n_recorded)] = self.particles.detach()
            self.n_recorded += 1

    # ---- metrics and pictures --------------------------------------------------------------
    def ensemble_stats(self) -> dict[str, torch.Tensor]:
        """Per γ: fraction of realizations whose particles all sit in one mode, and mean
        distance of particles to their nearest mode."""
        theta = self.particles.detach()
        dists = torch.cdist(theta.reshape(-1, 2), self.means).reshape(*theta.shape[:-1], -1)
        nearest = dists.argmin(-1)                               # [G, R, N]
        collapsed = (nearest == nearest[..., :1]).all(-1).float()  # [G, R]
        return {"collapse": collapsed.mean(-1), "mode_distance": dists.min(-1).values.mean((-1, -2))}

    def final_metrics(self) -> dict[str, float]:
        stats = self.ensemble_stats()
        out = {"step": self.trained_steps}
        for i, gamma in enumerate(self.cfg.gammas):
            out[f"collapse_fraction/gamma={gamma:g}"] = float(stats["collapse"][i])
            out[f"mean_mode_distance/gamma={gamma:g}"] = float(stats["mode_distance"][i])
        return out

    def validation_step(self, batch, batch_idx):
        self.plot_paths(self.save_path(f"it{self.global_step}-val/particle_paths.png"))

    def test_step(self, batch, batch_idx):
        metrics = self.report_metrics(self.final_metrics())
        self.plot_paths(self.save_path("particle_paths.png"))
        self.plot_tradeoff(self.save_path("collapse_vs_gamma.png"), metrics)

    def plot_paths(self, path, n_shown: int = 12) -> None:
        """One panel per γ: the paths of the first ``n_shown`` realizations' particles."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths = torch.cat([self.paths[: int(self.n_recorded)], self.particles.detach()[None]]).cpu()
        g = len(self.cfg.gammas)
        fig, axes = plt.subplots(1, g, figsize=(3.2 * g, 3.4), squeeze=False)
        colors = plt.cm.tab10.colors
        for i, ax in enumerate(axes[0]):
            for r in range(min(n_shown, paths.shape[2])):
                for n in range(paths.shape[3]):
                    xy = paths[:, i, r, n]
                    ax.plot(xy[:, 0], xy[:, 1], "-", lw=0.8, color=colors[r % 10], alpha=0.7)
                    ax.plot(xy[-1, 0], xy[-1, 1], "o", ms=3, color=colors[r % 10])
            ax.scatter(self.means[:, 0].cpu(), self.means[:, 1].cpu(), marker="x", s=80, c="k", zorder=5)
            ax.set_title(f"γ = {self.cfg.gammas[i]:g}")
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
        fig.suptitle(f"particle paths, step {self.global_step}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def plot_tradeoff(self, path, metrics: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{g:g}" for g in self.cfg.gammas]
        collapse = [metrics[f"collapse_fraction/gamma={g:g}"] for g in self.cfg.gammas]
        distance = [metrics[f"mean_mode_distance/gamma={g:g}"] for g in self.cfg.gammas]
        fig, ax1 = plt.subplots(figsize=(6, 3.6))
        ax1.bar(labels, collapse, color="tab:blue", alpha=0.7)
        ax1.set_xlabel("repulsion weight γ")
        ax1.set_ylabel("fraction of collapsed realizations", color="tab:blue")
        ax2 = ax1.twinx()
        ax2.plot(labels, distance, "o-", color="tab:red")
        ax2.set_ylabel("mean distance to nearest mode", color="tab:red")
        ax2.set_yscale("log")
        fig.suptitle("diversity (collapse) vs quality (distance to modes)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
