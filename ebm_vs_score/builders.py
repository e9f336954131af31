"""From typed settings to the objects the math modules need: SDE, network, score/energy, loss.

The functions take the :class:`ebm_vs_score.settings.Settings` of ``settings.from_config``
and call the math with plain arguments, so that train, eval, sample and study build exactly
the same model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ebm_vs_score import drl, eqm, losses, models, samplers, settings
from ebm_vs_score import energy_matching as em_lib
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.drl import DRLSchedule


class Model(NamedTuple):
    """A network with its noise process and the score/energy functions it yields.

    ``sde`` is the noise process of score-based models (None for DRL and the time-invariant
    models); ``ladder`` the DRL level ladder (None otherwise): a DRL energy is indexed by
    integer levels, not times. A time-invariant model's functions ignore their time input.
    """

    net: Any
    sde: sde_lib.SDE | None
    fns: param_lib.ModelFns
    example_shape: tuple[int, ...]
    ladder: DRLSchedule | None = None


def build_sde(s: settings.SDESettings) -> sde_lib.SDE:
    """The SDE of ``sde.*``."""
    return sde_lib.make_sde(s.name, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                            beta_min=s.beta_min, beta_max=s.beta_max,
                            num_scales=s.num_scales, eps=s.eps)


def build_model(s: settings.Settings) -> Model:
    """Builds network, SDE (or DRL ladder) and the parameterization of the settings."""
    settings.require(s)
    parameterization = s.model.parameterization
    scalar = param_lib.SCALAR_OUTPUT[parameterization]
    net = models.get_network(s.model, scalar_output=scalar)
    if parameterization == "conservative":
        # E = ||F||^2 / 2: a zero-initialized output layer makes F = 0 a stationary point
        # of every objective (score and all parameter gradients vanish there).
        net = net.clone(zero_init_output=False)
    sigma_data = float(s.model.sigma_data)
    if s.time_invariant is not None:
        fns = time_invariant_fns(net, s.time_invariant)
        return Model(net=net, sde=None, fns=fns, example_shape=s.example_shape)
    if s.drl is not None:
        ladder = s.drl.schedule
        fns = drl.model_fns(parameterization, net, ladder, sigma_data,
                            energy_base=s.model.energy_base,
                            energy_scale=s.drl.energy_scale, chain=s.drl.chain)
        return Model(net=net, sde=None, fns=fns, example_shape=s.example_shape, ladder=ladder)
    sde = build_sde(s.sde)
    fns = param_lib.get_model_fns(parameterization, net, sde, sigma_data,
                                  energy_base=s.model.energy_base)
    return Model(net=net, sde=sde, fns=fns, example_shape=s.example_shape)


def time_invariant_fns(net, ti: settings.TimeInvariantSettings) -> param_lib.ModelFns:
    """EqM's implicit field (no energy form), or the energy of ``ti.energy_form``."""
    if ti.energy_form is None:
        return eqm.implicit_fns(net)
    return eqm.energy_fns(net, ti.energy_form, ti.c_max)


class PhasedLoss(NamedTuple):
    """Objectives by training phase: ``loss_fns[i]`` trains the steps from ``starts[i]`` on
    (``train.compile_train_step`` compiles one step per phase)."""

    starts: tuple[int, ...]
    loss_fns: tuple[Any, ...]


def time_invariant_loss(ti: settings.TimeInvariantSettings, fns: param_lib.ModelFns):
    """EqM's loss, or Energy Matching's two phases (flow matching, then + CD)."""
    if ti.objective == "eqm":
        return eqm.eqm_loss(eqm.field_of(fns), c_max=ti.c_max, interp=ti.interp)
    s = ti.em
    warmup = em_lib.energy_matching_loss(fns.energy, s, phase=1)
    if s.lambda_cd == 0:
        return warmup
    full = em_lib.energy_matching_loss(fns.energy, s, phase=2)
    if s.phase1_steps == 0:
        return full
    return PhasedLoss((0, int(s.phase1_steps)), (warmup, full))


def init_params(model: Model, key: jax.Array) -> Any:
    """Initial network parameters, from a batch of one example."""
    x = jnp.zeros((1,) + model.example_shape, jnp.float32)
    return model.net.init({"params": key}, x, jnp.zeros((1,)), train=False)["params"]


def make_sample_fn(s: settings.Settings, model: Model, num_samples: int | None = None):
    """``sample_fn(params, key) -> (samples, info)`` for the configured sampler, jitted once,
    drawing ``num_samples`` (default ``sampling.num_samples``) per call."""
    sampling = settings.require(s).sampling
    num = sampling.num_samples if num_samples is None else num_samples
    shape = (int(num),) + model.example_shape
    options = sampling.options

    if s.drl is not None:
        chain = s.drl.chain

        def drl_sample_fn(params, key):
            energy = param_lib.bind(model.fns.energy, params)
            return drl.drl_sample(energy, key, shape, model.ladder, chain)

        return jax.jit(drl_sample_fn)

    def sample_fn(params, key):
        return samplers.sample(
            sampling.method, key, shape, sde=model.sde,
            score_fn=param_lib.bind(model.fns.score, params),
            energy_fn=param_lib.bind(model.fns.energy, params),
            num_steps=int(sampling.num_steps), **options)

    return jax.jit(sample_fn)


def make_snapshot_sample_fn(s: settings.Settings, model: Model, checkpoints,
                            num_samples: int | None = None):
    """``fn(params, key) -> (samples (C, B, ...), info)``: the configured 'gd' / 'nag'
    sampler after each of ``checkpoints`` steps from one chain per example
    (``samplers.sample_snapshots``), jitted once."""
    sampling = settings.require(s).sampling
    num = sampling.num_samples if num_samples is None else num_samples
    shape = (int(num),) + model.example_shape
    marks = tuple(int(c) for c in checkpoints)

    def snapshot_fn(params, key):
        return samplers.sample_snapshots(
            sampling.method, key, shape, score_fn=param_lib.bind(model.fns.score, params),
            checkpoints=marks, **sampling.options)

    return jax.jit(snapshot_fn)


def param_shapes(s: settings.Settings) -> Any:
    """``(shape, dtype)`` of every parameter of the settings' network (nothing allocated)."""
    model = build_model(s)
    shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: (x.shape, x.dtype), shapes)


def loss_from_settings(s: settings.LossSettings, fns: param_lib.ModelFns, sde: sde_lib.SDE):
    """The score-matching objective of ``s`` as ``loss_fn(params, batch, key)``."""
    qc = dict(reduce_mean=s.reduce_mean, qc_weight=s.qc_weight, qc_probes=s.qc_probes,
              qc_fraction=s.qc_fraction, qc_every=s.qc_every)
    lw = s.likelihood_weighting
    if s.objective == "dsm":
        if s.dsm_variant == "smld":
            return losses.smld_loss(fns.score, sde, **qc)
        if s.dsm_variant == "ddpm":
            return losses.ddpm_loss(fns.score, sde, **qc)
        return losses.dsm_loss(fns.score, sde, likelihood_weighting=lw, **qc)
    if s.objective in ("ssm", "ssm_vr"):
        return losses.ssm_loss(fns.score, sde, variance_reduction=s.objective == "ssm_vr",
                               projection=s.ssm_projection,
                               num_projections=s.ssm_num_projections,
                               likelihood_weighting=lw, **qc)
    if s.objective == "ism":
        return losses.ism_loss(fns.score, sde, max_dim=s.ism_max_dim, likelihood_weighting=lw,
                               **qc)
    raise ValueError(f"unknown training.objective {s.objective!r}; valid names: "
                     f"{list(losses.OBJECTIVES)}")


def build_loss_fn(s: settings.Settings, model: Model):
    """The objective named by ``training.objective`` as ``loss_fn(params, batch, key)``, or
    a :class:`PhasedLoss` (Energy Matching's warm-up, then contrastive divergence)."""
    settings.require(s)
    if s.drl is not None:
        return drl.make_drl_loss(model.fns.energy, model.ladder, s.drl.chain, s.drl.energy_scale)
    if s.time_invariant is not None:
        return time_invariant_loss(s.time_invariant, model.fns)
    return loss_from_settings(s.loss, model.fns, model.sde)
