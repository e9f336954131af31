"""Equilibrium Matching (EqM): one time-invariant gradient field, learned and exact.

Wang & Du 2025, "Equilibrium Matching" (arXiv 2510.02300; code github.com/taut-ai/EqM,
hereafter *the code*). Data x, noise eps ~ N(0, I), gamma ~ U(0, 1) and the flow-matching
path (Sec. 3, eq. 3-4; the code's ``transport.ICPlan`` with t = gamma)

    x_gamma = gamma x + (1 - gamma) eps,        target  (eps - x) c(gamma),
    c(gamma) = c_max min(1, (1 - gamma) / (1 - a))          (c_max = 4, a = 0.8),

(the code's ``Transport.get_ct``: constant up to gamma = a, then falling linearly to 0 at
the data). The network is not conditioned on time: its time input is zeroed (the code's
``uncond=True``). The loss is the mean over dimensions and batch of
``(f(x_gamma) - target)^2`` (the code's ``mean_flat``).

Sign convention. Here the field is the gradient of an energy that is low at the data,
f = grad E ~ (eps - x) c, and sampling descends it, x <- x - eta f (the paper's eq. 6).
The code trains the opposite sign, out ~ (x - eps) c = -f, and ascends it; the two are the
same model. The project's score interface returns s = -f (pointing at the data, like
-grad E of every energy family; DESIGN.md rule 2), so ``ModelFns.score(params, x, t)``
ignores t and returns -f.

Forms (:data:`ENERGY_FORMS`):

* implicit (``eqm``): f(x) = F(x), the raw network output, any vector field.
* ``'dot'`` and ``'l2'`` (EqM-E, Sec. 3.3; the code's ``ebm='dot'`` / ``'l2'`` in
  ``models.py``): the code ascends the gradient of a potential phi(x), phi = <F(x), x>
  ('dot') or phi = -1/2 ||F(x)||^2 ('l2'), and reports -phi as the energy
  (``get_energy``). So E = -phi: E = -<F(x), x> or E = 1/2 ||F(x)||^2, and f = grad E by
  autodiff. ('l2' needs a non-zero initial last layer: with F = 0 every parameter gradient
  of 1/2 ||F||^2 vanishes, as for the C family.)
* ``'scalar'``: a scalar network N (the ResNet energy of Salimans & Ho's model C, or the
  scalar MLP on toys) with the restoring base term of DESIGN.md rule 2,
  E = c_max ||x||^2 / 2 + N(x). The base is the exact energy of the optimal field at the
  noise end: at gamma = 0, x_0 = eps and E[(eps - x) c(0) | x_0] = c_max (x_0 - E[x]),
  i.e. c_max x_0 for centred data; without it a normalized scalar head is bounded far from
  the data and gradient descent from noise has nothing to descend.

Exact answers (:func:`optimal_field`). For data from a Gaussian mixture
sum_k w_k N(mu_k, s_k^2 I), given gamma and component k, x_gamma ~ N(gamma mu_k, v_k I)
with v_k = gamma^2 s_k^2 + (1 - gamma)^2, and E[eps - x | x_gamma, gamma, k] is the linear
Gaussian regression -mu_k + ((1 - gamma) - gamma s_k^2) / v_k (x_gamma - gamma mu_k). The
minimizer of the EqM loss is f*(y) = E[(eps - x) c(gamma) | x_gamma = y], the average of
c(gamma) times that regression over the posterior of (gamma, k) given y, which
:func:`optimal_field` computes by quadrature over gamma.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ebm_vs_score.parameterization import ModelFns, score_from_energy

C_MAX = 4.0  # the code's get_ct: 4 min(1, (1 - gamma) / 0.2)
INTERP = 0.8
ENERGY_FORMS = ("dot", "l2", "scalar")  # explicit EqM-E energies (module docstring)
Field = Callable[..., jax.Array]  # field(params, x, key=None) -> like x


def c_gamma(gamma: jax.Array, c_max: float = C_MAX, interp: float = INTERP) -> jax.Array:
    """c(gamma) = c_max min(1, (1 - gamma) / (1 - interp)) (the code's ``get_ct``)."""
    return c_max * jnp.minimum(1.0, (1.0 - gamma) / (1.0 - interp))


def check_schedule(c_max: float, interp: float) -> None:
    """c_max > 0 and interp in [0, 1): else a ValueError naming the field."""
    if not c_max > 0:
        raise ValueError(f"eqm.c_max={c_max} must be positive (the paper uses 4)")
    if not 0 <= interp < 1:
        raise ValueError(f"eqm.interp={interp} must lie in [0, 1) (the paper uses 0.8)")


def check_form(form: str, scalar_network: bool) -> None:
    """A known form that fits the network: 'scalar' iff the network outputs a scalar."""
    if form not in ENERGY_FORMS:
        raise ValueError(f"model.energy_form={form!r} is not valid; choose one of "
                         f"{list(ENERGY_FORMS)}")
    if (form == "scalar") != scalar_network:
        kind = "a scalar network" if scalar_network else "a vector network (U-Net, MLP)"
        raise ValueError(f"model.energy_form={form!r} does not fit {kind}: use 'scalar' with "
                         "model.parameterization='resnet_energy' and 'dot' or 'l2' with "
                         "'conservative'")


def _bcast(a: jax.Array, x: jax.Array) -> jax.Array:
    return a.reshape((-1,) + (1,) * (x.ndim - 1))


def eqm_path(key: jax.Array, x: jax.Array, c_max: float = C_MAX, interp: float = INTERP
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_gamma, target (eps - x) c(gamma), gamma) for data x (B, ...) (module docstring)."""
    k_g, k_e = jax.random.split(key)
    gamma = jax.random.uniform(k_g, (x.shape[0],), x.dtype)
    eps = jax.random.normal(k_e, x.shape, x.dtype)
    x_gamma = _bcast(gamma, x) * x + _bcast(1.0 - gamma, x) * eps
    return x_gamma, _bcast(c_gamma(gamma, c_max, interp), x) * (eps - x), gamma


def eqm_loss(field_fn: Field, *, c_max: float = C_MAX, interp: float = INTERP,
             train: bool = True) -> Callable:
    """The EqM objective as ``loss_fn(params, batch, key) -> (loss, metrics)``.

    loss = mean_i mean_d (f(x_gamma) - (eps - x) c(gamma))^2 (Wang & Du 2025, eq. 4; the
    code's ``training_losses``); ``batch['x']`` is clean data; ``train`` turns dropout on.
    """

    def loss_fn(params: Any, batch: dict, key: jax.Array):
        k_path, k_drop = jax.random.split(key)
        x_gamma, target, _ = eqm_path(k_path, batch["x"], c_max, interp)
        out = field_fn(params, x_gamma, k_drop if train else None)
        per = jnp.mean((out - target).reshape(out.shape[0], -1) ** 2, axis=-1)
        loss = jnp.mean(per)
        return loss, {"eqm": loss}

    return loss_fn


# ----------------------------------------------------------------------------------------
# Networks -> field / energy (time input zeroed)
# ----------------------------------------------------------------------------------------


def apply_untimed(net, params: Any, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """The network at x with its time input zeroed (the code's ``uncond=True``), float32;
    ``key`` switches dropout on."""
    cond = jnp.zeros((x.shape[0],), jnp.float32)
    if key is None:
        out = net.apply({"params": params}, x, cond, train=False)
    else:
        out = net.apply({"params": params}, x, cond, train=True, rngs={"dropout": key})
    return out.astype(jnp.float32)


def _sum_sq(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)


def energy_fn(net, form: str, c_max: float = C_MAX) -> Callable:
    """``E(params, x, t=None, key=None) -> (B,)`` of an EqM-E form; t is ignored.

    'dot': -<F(x), x>; 'l2': ||F(x)||^2 / 2; 'scalar': c_max ||x||^2 / 2 + N(x)
    (module docstring: the code's potentials phi with E = -phi, and the base term).
    """
    if form not in ENERGY_FORMS:
        raise ValueError(f"unknown energy form {form!r}; valid names: {list(ENERGY_FORMS)}")

    def energy(params, x, t=None, key=None):
        out = apply_untimed(net, params, x, key)
        x32 = x.astype(jnp.float32)
        if form == "dot":
            return -jnp.sum((out * x32).reshape(x.shape[0], -1), axis=-1)
        if form == "l2":
            return 0.5 * _sum_sq(out)
        return 0.5 * c_max * _sum_sq(x32) + out.reshape(x.shape[0])

    return energy


def implicit_fns(net) -> ModelFns:
    """EqM's implicit field f(x) = F(x); ``score(params, x, t, key) = -f`` (t ignored)."""

    def score(params, x, t=None, key=None):
        return -apply_untimed(net, params, x, key)

    return ModelFns(score=score, energy=None, conservative=False)


def energy_fns(net, form: str, c_max: float = C_MAX) -> ModelFns:
    """EqM-E (and Energy Matching's potential): E of ``form``, score = -grad E (t ignored)."""
    energy = energy_fn(net, form, c_max)
    return ModelFns(score=score_from_energy(energy), energy=energy, conservative=True)


def field_of(fns: ModelFns) -> Field:
    """The field f(params, x, key=None) = -score: grad E, the direction descent goes against."""

    def field(params, x, key=None):
        return -fns.score(params, x, jnp.zeros((x.shape[0],), jnp.float32), key)

    return field


# ----------------------------------------------------------------------------------------
# The exact optimal field of a Gaussian mixture (quadrature over gamma)
# ----------------------------------------------------------------------------------------


def gamma_nodes(num_nodes: int) -> tuple[jax.Array, jax.Array]:
    """Quadrature nodes and weights on (0, 1): midpoints in u with gamma = 1 - u^3.

    The substitution puts most nodes near gamma = 1, where the posterior of gamma given a
    point near narrow data components is sharp (width ~ s_k); d gamma = 3 u^2 du.
    """
    u = (jnp.arange(num_nodes) + 0.5) / num_nodes
    return 1.0 - u**3, 3.0 * u**2 / num_nodes


def _posterior_terms(y, gamma, weights, means, stds):
    """log p(y | gamma, k) + log w_k (B, G, K) and E[eps - x | y, gamma, k] (B, G, K, D)."""
    g = gamma[None, :, None]
    var = g**2 * stds[None, None, :] ** 2 + (1.0 - g) ** 2  # (1, G, K)
    centred = y[:, None, None, :] - g[..., None] * means[None, None]  # (B, G, K, D)
    dim = y.shape[-1]
    log_like = (-0.5 * jnp.sum(centred**2, -1) / var - 0.5 * dim * jnp.log(2 * jnp.pi * var)
                + jnp.log(weights)[None, None])
    slope = ((1.0 - g) - g * stds[None, None, :] ** 2) / var
    return log_like, -means[None, None] + slope[..., None] * centred


def optimal_field(y: jax.Array, weights: jax.Array, means: jax.Array, stds: jax.Array, *,
                  c_max: float = C_MAX, interp: float = INTERP, num_nodes: int = 2048
                  ) -> jax.Array:
    """f*(y) = E[(eps - x) c(gamma) | x_gamma = y] for mixture data (module docstring).

    Args:
      y: (B, D) points.
      weights, means, stds: the mixture sum_k w_k N(mu_k, s_k^2 I): (K,), (K, D), (K,).
      c_max, interp: c(gamma).
      num_nodes: quadrature nodes over gamma (:func:`gamma_nodes`).

    Returns:
      (B, D), the minimizer of the EqM loss over all fields.
    """
    gamma, dgamma = gamma_nodes(num_nodes)
    log_like, mean = _posterior_terms(y, gamma, weights, means, stds)
    log_post = log_like + jnp.log(dgamma)[None, :, None]
    post = jax.nn.softmax(log_post.reshape(y.shape[0], -1), axis=-1).reshape(log_post.shape)
    c = c_gamma(gamma, c_max, interp)[None, :, None, None]
    return jnp.sum(post[..., None] * c * mean, axis=(1, 2))
