"""Energy Matching: one time-independent scalar potential V(x), trained in two phases.

Balcerak et al., "Energy Matching", NeurIPS 2025 (arXiv 2504.10612; code
github.com/m1balcerak/EnergyMatching, hereafter *the code*). The velocity of a point is
v(x) = -grad V(x) (the code's ``velocity``); V is any energy of this project that ignores
its time input (``eqm.energy_fns``: 'dot', 'l2' on a U-Net or vector MLP, 'scalar' on the
ResNet energy or scalar MLP).

Phase 1 (warm-up, Algorithm 1): flow matching along optimal-transport pairs. Noise x0 ~
N(0, I) and data x1 are paired by the exact mini-batch OT assignment (squared Euclidean
cost; torchcfm's ``ExactOptimalTransportConditionalFlowMatcher`` with sigma = 0), t ~ U(0, 1),
x_t = (1 - t) x0 + t x1, target u = x1 - x0, and

    L_flow = mean_i w(t_i) mean_d (v(x_t) - u)^2,
    w(t) = 1 for t < tau*, falling linearly to 0 at t = 1 (the code's ``flow_weight``).

Phase 2 (Algorithm 2) adds contrastive divergence at the data:

    L = L_flow + max(lambda_cd (mean V(x+) - trimmed mean V(x-)), -clamp),

with x+ data, x- the end of Langevin chains x <- x - dt grad V + sqrt(2 dt eps(t)) N(0, I)
(``langevin_chain``) with t_k = k dt and eps(t) = 0 for t < tau*, rising linearly to eps_max
at t = 1, eps_max after (the code's ``plot_epsilon`` / ``gibbs_sampling_time_sweep``),
started half from data and half from noise (``split_negative=True``, one temperature
schedule for all, ``same_temperature_scheduler=True``), no gradient through the chains.
The trimmed mean drops the highest ``trim`` fraction of negative energies
(``cd_trim_fraction``), and the clamp stops the CD term from pushing V(x+) further below
V(x-) once the gap is ``clamp`` (``cd_neg_clamp``). The CD term acts at the data, t = 1,
where the paper's CD weight (rising from tau*) is 1.

The OT assignment runs on the host (``jax.pure_callback`` into SciPy's Jonker-Volgenant
``linear_sum_assignment``, imported there); it is a permutation, where torchcfm draws B
pairs from the plan with replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import mcmc

BoundEnergy = Callable[[jax.Array], jax.Array]


class EMSettings(NamedTuple):
    """``energy_matching.*``: the two phases' constants (Balcerak et al.; the code's flags)."""

    time_cutoff: float = 0.8  # tau*
    lambda_cd: float = 1e-3
    num_gibbs: int = 200  # Langevin steps of the negatives (n_gibbs)
    dt: float = 0.01  # dt_gibbs
    eps_max: float = 0.01  # epsilon_max
    phase1_steps: int = 0  # warm-up length; 0 = CD from the first step
    cd_trim_fraction: float = 0.1
    cd_neg_clamp: float = 0.02  # 0 = no clamp
    split_negatives: bool = True


def check_settings(s: EMSettings) -> None:
    """Each field in its range; a ValueError naming the field otherwise."""
    checks = [
        (0 <= s.time_cutoff < 1, f"energy_matching.time_cutoff={s.time_cutoff} must lie in "
         "[0, 1) (the paper uses 0.8)"),
        (s.lambda_cd >= 0, f"energy_matching.lambda_cd={s.lambda_cd} must be >= 0 (0 = no "
         "contrastive divergence)"),
        (int(s.num_gibbs) >= 1, f"energy_matching.num_gibbs={s.num_gibbs} must be >= 1"),
        (s.dt > 0, f"energy_matching.dt={s.dt} must be positive (the paper uses 0.01)"),
        (s.eps_max >= 0, f"energy_matching.eps_max={s.eps_max} must be >= 0"),
        (int(s.phase1_steps) >= 0, f"energy_matching.phase1_steps={s.phase1_steps} must be "
         ">= 0"),
        (0 <= s.cd_trim_fraction < 1, f"energy_matching.cd_trim_fraction="
         f"{s.cd_trim_fraction} must lie in [0, 1)"),
        (s.cd_neg_clamp >= 0, f"energy_matching.cd_neg_clamp={s.cd_neg_clamp} must be >= 0 "
         "(0 = no clamp)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def flow_weight(t: jax.Array, cutoff: float) -> jax.Array:
    """w(t) = 1 below ``cutoff``, linear to 0 at t = 1, 0 after (the code's ``flow_weight``)."""
    return jnp.clip((1.0 - t) / (1.0 - cutoff), 0.0, 1.0)


def temperature(t: jax.Array, cutoff: float, eps_max: float) -> jax.Array:
    """eps(t) = 0 below ``cutoff``, linear to ``eps_max`` at t = 1, ``eps_max`` after."""
    return eps_max * jnp.clip((t - cutoff) / (1.0 - cutoff), 0.0, 1.0)


def _assignment(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # host side only (module docstring)

    rows, cols = linear_sum_assignment(np.asarray(cost, np.float64))
    out = np.empty(len(rows), np.int32)
    out[rows] = cols
    return out


def ot_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """perm (B,) minimizing sum_i ||x0[perm[i]] - x1[i]||^2: the exact mini-batch OT plan
    between two equal-size batches (a permutation for uniform weights)."""
    a = jax.lax.stop_gradient(x1.reshape(x1.shape[0], -1))
    b = jax.lax.stop_gradient(x0.reshape(x0.shape[0], -1))
    cost = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2.0 * a @ b.T
    spec = jax.ShapeDtypeStruct((x1.shape[0],), jnp.int32)
    return jax.pure_callback(_assignment, spec, cost, vmap_method="sequential")


def ot_flow_pairs(key: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_t, u, t): OT-paired noise and data, x_t = (1 - t) x0 + t x1, u = x1 - x0."""
    k_noise, k_t = jax.random.split(key)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
    x0 = x0[ot_permutation(x0, x1)]
    t = jax.random.uniform(k_t, (x1.shape[0],), x1.dtype)
    tb = t.reshape((-1,) + (1,) * (x1.ndim - 1))
    return (1.0 - tb) * x0 + tb * x1, x1 - x0, t


def flow_loss(velocity: Callable[[jax.Array], jax.Array], key: jax.Array, x1: jax.Array,
              cutoff: float) -> jax.Array:
    """L_flow = mean_i w(t_i) mean_d (v(x_t) - u)^2 on OT pairs (module docstring)."""
    x_t, u, t = ot_flow_pairs(key, x1)
    sq = (velocity(x_t) - u).reshape(x1.shape[0], -1) ** 2
    return jnp.mean(flow_weight(t, cutoff) * jnp.mean(sq, axis=-1))


def langevin_chain(energy: BoundEnergy, key: jax.Array, x: jax.Array, *, num_steps: int,
                   dt: float, cutoff: float, eps_max: float, t0: float = 0.0) -> jax.Array:
    """x <- x - dt grad V(x) + sqrt(2 dt eps(t_k)) z for t_k = t0 + k dt, one ``lax.scan``
    (the code's ``gibbs_sampling_time_sweep``); returns the last state (num_steps NFE)."""

    def step(x, k):
        _, g = mcmc.energy_and_grad(energy, x)
        eps = temperature(t0 + k * dt, cutoff, eps_max)
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
        return x - dt * g + jnp.sqrt(2.0 * dt * eps) * z, None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps))
    return x


def trimmed_mean(values: jax.Array, trim: float) -> jax.Array:
    """Mean of ``values`` without the highest floor(trim n) of them (``cd_trim_fraction``)."""
    n = values.shape[0]
    keep = n - int(trim * n)
    return jnp.mean(jnp.sort(values)[:keep])


def cd_term(v_pos: jax.Array, v_neg: jax.Array, s: EMSettings) -> jax.Array:
    """max(lambda_cd (mean V(x+) - trimmed mean V(x-)), -clamp) (the code's ``forward_all``)."""
    cd = s.lambda_cd * (jnp.mean(v_pos) - trimmed_mean(v_neg, s.cd_trim_fraction))
    return jnp.maximum(cd, -s.cd_neg_clamp) if s.cd_neg_clamp > 0 else cd


def negatives_init(key: jax.Array, x: jax.Array, split: bool) -> jax.Array:
    """Chain starts: the first half data, the rest N(0, I) noise (all noise without split)."""
    noise = jax.random.normal(key, x.shape, x.dtype)
    if not split:
        return noise
    half = x.shape[0] // 2
    return jnp.concatenate([x[:half], noise[half:]])


def energy_matching_loss(energy_fn: Callable[..., jax.Array], s: EMSettings, *,
                         phase: int, train: bool = True) -> Callable:
    """The phase-1 (flow only) or phase-2 (flow + CD) objective as ``loss_fn(params, batch,
    key) -> (loss, metrics)``; ``energy_fn(params, x, t, key=None) -> (B,)``.

    Metrics: ``flow``, and in phase 2 ``cd`` (the clamped, weighted term), ``v_pos`` and
    ``v_neg`` (mean potentials of data and negatives).
    """
    if phase not in (1, 2):
        raise ValueError(f"phase={phase} must be 1 (warm-up) or 2 (with CD)")

    def loss_fn(params: Any, batch: dict, key: jax.Array):
        x = batch["x"]
        k_flow, k_drop, k_init, k_chain = jax.random.split(key, 4)
        drop = k_drop if train else None

        def potential(y):
            return energy_fn(params, y, None, drop)

        def velocity(y):
            return -jax.grad(lambda z: jnp.sum(potential(z)))(y)

        flow = flow_loss(velocity, k_flow, x, s.time_cutoff)
        if phase == 1:
            return flow, {"flow": flow}
        frozen = jax.lax.stop_gradient(params)
        chain_energy = lambda y: energy_fn(frozen, y, None, None)  # noqa: E731
        x_neg = jax.lax.stop_gradient(langevin_chain(
            chain_energy, k_chain, negatives_init(k_init, x, s.split_negatives),
            num_steps=int(s.num_gibbs), dt=s.dt, cutoff=s.time_cutoff, eps_max=s.eps_max))
        v_pos, v_neg = potential(x), potential(x_neg)
        cd = cd_term(v_pos, v_neg, s)
        return flow + cd, {"flow": flow, "cd": cd, "v_pos": jnp.mean(v_pos),
                           "v_neg": jnp.mean(v_neg)}

    return loss_fn
