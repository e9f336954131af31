"""Probability-flow ODE samplers (Song et al. 2021, eq. 13): fixed-grid Euler / Heun and
adaptive Tsit5 (diffrax), and the adaptive solver the likelihood reuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from ebm_vs_score.samplers import common
from ebm_vs_score.samplers.common import EnergyFn, Samples, ScoreFn, Shape
from ebm_vs_score.sde import batch_mul

TSIT5_NFE_PER_STEP = 6  # 7 stages, first-same-as-last: 6 new evaluations per (tried) step
TSIT5_NFE_INIT = 1  # the first stage of the first step (later ones reuse the last stage)


def ode_drift(score_fn: ScoreFn, sde) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Probability-flow drift dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 (Song et al. eq. 13)."""

    def drift(x: jax.Array, t: jax.Array) -> jax.Array:
        f, g = sde.sde(x, t)
        return f - batch_mul(0.5 * g**2, score_fn(x, t))

    return drift


ODE_SOLVERS = {"euler": 1, "heun": 2}  # ode_solver -> network evaluations per step


def probability_flow_ode(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, ode_solver: str = "heun", denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Fixed-grid Euler or Heun (Karras et al. 2022, Alg. 1) on the probability-flow ODE.

    Deterministic given the prior sample. NFE = num_steps (Euler) or 2 num_steps (Heun),
    plus denoise.
    """
    solvers = ODE_SOLVERS
    common.choose(ode_solver, solvers, "ode_solver")
    drift = ode_drift(score_fn, sde)
    x = common.initial(key, shape, sde, init)
    ts = sde.time_grid(num_steps + 1)

    def step(x, inp):
        t, t_next = common.tvec(inp[0], x), common.tvec(inp[1], x)
        dt = t_next - t
        d = drift(x, t)
        if ode_solver == "heun":
            d = 0.5 * (d + drift(x + batch_mul(dt, d), t_next))
        return x + batch_mul(dt, d), None

    x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:]))
    x, nfe = common.finish(score_fn, sde, x, denoise, solvers[ode_solver] * num_steps)
    return x, {"nfe": jnp.asarray(nfe)}


def solve_adaptive(vector_field: Callable[[Any, jax.Array], Any], y0: Any, t0: float,
                   t1: float, *, rtol: float, atol: float, max_steps: int = 4096):
    """Adaptive Tsit5 (diffrax) from t0 to t1 (either direction); returns (y(t1), info).

    ``vector_field(y, t)`` with scalar t. Step sizes come from a ``PIDController`` on the RMS
    error norm of the whole pytree (one step size for the batch, as score_sde's RK45 on the
    flattened batch); the first step is (t1 - t0) / 100. info: ``nfe`` = 6 per tried step + 1
    (see TSIT5_NFE_*), and diffrax's ``num_steps`` (tried), ``num_accepted_steps``.
    """
    term = diffrax.ODETerm(lambda t, y, args: vector_field(y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=t0, t1=t1, dt0=(t1 - t0) / 100, y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    y1 = jax.tree.map(lambda a: a[-1], sol.ys)
    steps = jnp.asarray(sol.stats["num_steps"])
    info = {"nfe": TSIT5_NFE_PER_STEP * steps + TSIT5_NFE_INIT, "num_steps": steps,
            "num_accepted_steps": jnp.asarray(sol.stats["num_accepted_steps"])}
    return y1, info


def probability_flow_ode_adaptive(key, shape, *, sde, score_fn, energy_fn=None,
                                  num_steps: int, rtol: float = 1e-5, atol: float = 1e-5,
                                  denoise: bool = True, init: jax.Array | None = None) -> Samples:
    """Probability-flow ODE from T to eps with adaptive Tsit5 (an RK45-class pair, like the
    RK45 of score_sde), at most ``num_steps`` solver steps. NFE from diffrax's stats."""
    drift = ode_drift(score_fn, sde)
    x = common.initial(key, shape, sde, init)
    x, info = solve_adaptive(lambda y, t: drift(y, common.tvec(t, y)), x, sde.T, sde.eps,
                             rtol=rtol, atol=atol, max_steps=num_steps)
    if denoise:
        x = common.tweedie_denoise(score_fn, sde, x, common.tvec(sde.eps, x))
        info["nfe"] = info["nfe"] + 1
    return x, info
