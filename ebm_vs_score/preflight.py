"""Start-up checks beyond the field checks of :mod:`ebm_vs_score.settings`, run before any
work so that nothing fails an hour (or 50,000 steps) into a run (DESIGN.md rule 8).

* The sampler and the network are built and traced abstractly (``jax.eval_shape``, no
  arrays allocated, milliseconds for a toy and about a second for the CIFAR U-Net): every
  option is then checked by the very code that will run it, so a new option cannot be
  left out of validation.
* Sizes get a lower bound on the memory they need: the train state (parameters, their EMA
  and two Adam moments, float32), and per device one batch of inputs plus the widest
  layer's activations for it (training, the sample grid, evaluation). A size whose lower
  bound exceeds the memory there is refused in one sentence naming the field and both
  amounts. A lower bound never refuses a run that would fit.
* :func:`check_mode`: the config fits the ``--mode`` (a compose config for compose, a
  digits run for inpaint, images and Inception weights for fid_stats, a study config for
  study).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

from ebm_vs_score import builders, samplers, settings
from ebm_vs_score.errors import ConfigError, DataError, format_bytes

_FLOAT_BYTES = 4
_STATE_COPIES = 4  # params, EMA params, Adam's two moments


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


def _dry_run_sampler(s: settings.Settings, model: builders.Model) -> None:
    """Traces the configured sampler on a 2-example batch with a stand-in score."""
    if s.is_drl:  # DRL samples with its own chain (checked by the drl.* reader)
        return
    sampling = s.sampling

    def score_fn(x, t):
        return -x

    def energy_fn(x, t):
        return 0.5 * jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)

    has_energy = model.fns.energy is not None
    try:
        jax.eval_shape(lambda key: samplers.sample(
            sampling.method, key, (2,) + model.example_shape, sde=model.sde,
            score_fn=score_fn, energy_fn=energy_fn if has_energy else None,
            num_steps=min(int(sampling.num_steps), 4), **sampling.options),
            jax.random.PRNGKey(0))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"sampling.method={sampling.method!r} cannot run with these "
                          f"sampling.* fields: {_first_line(e)}") from None


def _num_params(model: builders.Model) -> int:
    try:
        shapes = jax.eval_shape(lambda key: builders.init_params(model, key),
                                jax.random.PRNGKey(0))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"the network of model.name={model.net.__class__.__name__!r} cannot "
                          f"be built from these model.* fields: {_first_line(e)}") from None
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def memory_available() -> tuple[int, str, int]:
    """(bytes, what, devices sharing them): one accelerator's memory, or the host's RAM
    shared by the local CPU devices."""
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory statistics
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"memory of one {device.device_kind}", 1
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(ram), "host memory", jax.local_device_count()


def _widest_layer(s: settings.Settings) -> int:
    """Floats per example of the widest activation a forward pass must hold (a lower
    bound: the MLP's widest hidden layer, the first convolution's output for images)."""
    if s.is_toy:
        return int(max(s.model.hidden))
    size = int(s.data.image_size)
    return size * size * int(s.model.ch)


def _model_fields(model: settings.ModelSettings) -> str:
    if model.name == "mlp":
        return f"model.hidden={tuple(model.hidden)}"
    return (f"model.ch={model.ch}, model.ch_mult={tuple(model.ch_mult)}, "
            f"model.num_res_blocks={model.num_res_blocks}")


def check_memory(s: settings.Settings, num_params: int, num_devices: int,
                 available: tuple[int, str, int] | None = None) -> None:
    """Refuses sizes whose lower bound on memory exceeds what the machine has."""
    have, what, sharing = memory_available() if available is None else available
    fmt = format_bytes
    state = _STATE_COPIES * num_params * _FLOAT_BYTES
    if state * sharing > have:
        raise ConfigError(
            f"the network of {_model_fields(s.model)} has {num_params:.3g} parameters, whose "
            f"train state (parameters, EMA, two Adam moments) needs at least {fmt(state)} per "
            f"device, more than the {fmt(have)} of {what}; use a smaller network")
    example = s.data_dim
    widest = _widest_layer(s)
    batch, accum = s.training.batch_size, s.training.grad_accum_steps
    sizes = [
        ("training.batch_size", batch,
         (batch // num_devices * example + batch // (accum * num_devices) * widest)),
        ("sampling.num_samples", s.sampling.num_samples,
         s.sampling.num_samples * (example + widest)),
        ("eval.batch_size", s.eval.batch_size, s.eval.batch_size * (example + widest)),
    ]
    for field, value, floats in sizes:
        need = state + floats * _FLOAT_BYTES
        if need * sharing > have:
            raise ConfigError(
                f"{field}={value} needs at least {fmt(need * sharing)} of memory (the train "
                f"state and, per example, {example} input and {widest} activation floats of "
                f"the widest layer), more than the {fmt(have)} of {what}; lower {field}")


def check_batch_split(batch: int, accum: int, num_devices: int) -> None:
    """The batch splits into ``accum`` equal micro-batches on each of ``num_devices``."""
    if batch % (accum * num_devices):
        raise ConfigError(
            f"training.batch_size={batch} is not divisible by training.grad_accum_steps="
            f"{accum} x {num_devices} device(s); use a multiple of {accum * num_devices}")


def check(s: settings.Settings, *, num_devices: int,
          available: tuple[int, str, int] | None = None) -> settings.Settings:
    """The start-up checks beyond the field checks of ``settings.from_config``: the batch
    split over these devices, memory, and a traced sampler; returns ``s``.

    Raises:
      ConfigError: one sentence naming the field, the bad value and the fix.
    """
    settings.require(s)
    check_batch_split(s.training.batch_size, s.training.grad_accum_steps, num_devices)
    model = builders.build_model(s)
    check_memory(s, _num_params(model), num_devices, available)
    _dry_run_sampler(s, model)
    return s


def _needs_section(section: object, name: str, mode: str, example: str) -> None:
    if section is None:
        raise ConfigError(f"--mode={mode} needs a config with a {name!r} section, e.g. "
                          f"--config={example}; this config has none")


def check_mode(mode: str, s: settings.Settings) -> None:
    """Whether the settings fit ``--mode`` (checked before the mode starts any work)."""
    if mode == "compose":
        from ebm_vs_score.compose import run as compose_run

        _needs_section(s.compose, "compose", mode, "configs/toy_compose.py")
        _as_config_error(compose_run.validate_compose, s.compose)
    elif mode == "study":
        _needs_section(s.study, "study", mode, "configs/study_toy.py")
    elif mode == "inpaint":
        from ebm_vs_score.inpaint import run as inpaint_run

        _as_config_error(inpaint_run.check_inpaint, s)
    elif mode == "fid_stats":
        _check_fid_stats(s)


def _as_config_error(check_fn, *args) -> None:
    try:
        check_fn(*args)
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(_first_line(e)) from None


def _check_fid_stats(s: settings.Settings) -> None:
    from ebm_vs_score.metrics import inception

    if s.is_toy:
        raise ConfigError(
            f"--mode=fid_stats computes Inception statistics of an image dataset, but "
            f"data.dataset={s.data.dataset!r} is a toy; use an image config, e.g. "
            "--config=configs/cifar_score.py")
    path = s.eval.inception_weights
    if path is None or not os.path.isfile(os.path.expanduser(path)):
        raise DataError(inception.missing_weights_message(path))
