"""Train state, the sharded train step and the training loop (DESIGN.md rules 3, 6, 7).

One ``jax.sharding.Mesh`` over all devices with a ``data`` axis: batches are sharded on
it, the state is replicated, and the step is ``jax.jit``-compiled with those shardings
and the state donated. Per-step randomness is ``fold_in(state.key, state.step)``, and the
data of step ``i`` is a function of ``(seed, i)``, so a run restarted from a checkpoint
reaches bit-identical parameters to one that was never interrupted.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ebm_vs_score import (
    builders,
    checkpoints,
    divergence,
    plotting,
    preflight,
    runlock,
    settings,
    writers,
)
from ebm_vs_score import data as data_lib
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.errors import NonFiniteLossError


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: step, params, EMA params, optimizer state, key."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: jax.Array


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``data`` over all (or the given) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def make_optimizer(optim: settings.OptimSettings) -> optax.GradientTransformation:
    """Adam/AdamW with linear warmup and global-norm clipping (Ho et al. 2020 setup)."""
    settings.require_section(optim, settings.OptimSettings, "optim")
    schedule = optax.linear_schedule(0.0, optim.lr, max(int(optim.warmup), 1))
    if optim.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                          weight_decay=optim.weight_decay)
    else:
        opt = optax.adam(schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
    return opt


def init_state(model: builders.Model, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh train state; the params' and the step keys both derive from ``seed``."""
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    params = builders.init_params(model, init_key)
    ema_params = jax.tree.map(jnp.copy, params)  # own buffers: the state is donated
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                      opt_state=tx.init(params), key=step_key)


def micro_batches(batch: dict, num: int) -> dict:
    """Splits a batch (B, ...) into ``num`` strided micro-batches (num, B // num, ...).

    Micro-batch j holds examples j, j + num, j + 2 num, ...: with the batch sharded
    contiguously over the devices, each device keeps its own rows of every micro-batch
    (no communication when B / devices is divisible by ``num``).
    """
    def split(x):
        return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulated_grads(loss_fn: Callable, params: Any, batch: dict, key: jax.Array,
                      num: int) -> tuple[jax.Array, dict, Any]:
    """(loss, metrics, grads) of ``loss_fn`` averaged over ``num`` micro-batches.

    ``num == 1`` is the plain full-batch gradient with ``key``. Otherwise a ``lax.scan``
    runs micro-batch j (see :func:`micro_batches`) with key ``fold_in(key, j)`` and the
    mean of the losses, metrics and gradients is returned: for a per-example-mean loss
    with equal micro-batches this is the full-batch gradient whenever each example sees
    the same noise in both paths (e.g. noise carried in the batch); with the losses'
    own per-batch noise draws it is a gradient of the same expected loss with other
    noise draws. Only one micro-batch's activations are alive at a time.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num == 1:
        (loss, metrics), grads = grad_fn(params, batch, key)
        return loss, metrics, grads
    micro = micro_batches(batch, num)

    def body(total, j):
        one = jax.tree.map(lambda x: x[j], micro)
        (loss, metrics), grads = grad_fn(params, one, jax.random.fold_in(key, j))
        return jax.tree.map(jnp.add, total, (loss, metrics, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(params, first, key))
    (loss_s, metrics_s), grads_s = shapes
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_s, metrics_s, grads_s))
    total, _ = jax.lax.scan(body, zeros, jnp.arange(num))
    return jax.tree.map(lambda t: t / num, total)


def train_step(state: TrainState, batch: dict, *, loss_fn: Callable,
               tx: optax.GradientTransformation, ema_decay: float, grad_accum_steps: int = 1):
    """One optimizer step; returns the new state and this step's metrics.

    With ``grad_accum_steps`` = k > 1 the gradient is the mean over k micro-batches of
    B / k examples (:func:`accumulated_grads`), computed inside this compiled step.
    """
    key = jax.random.fold_in(state.key, state.step)
    loss, metrics, grads = accumulated_grads(loss_fn, state.params, batch, key,
                                             grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with the usual warm-up (TF's ExponentialMovingAverage with num_updates), so
    # short runs do not sample from an average dominated by the initialization.
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = optax.tree_utils.tree_norm(grads)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
    return new_state, metrics


def _check_accum(grad_accum_steps: int, mesh: Mesh, batch_size: int | None) -> None:
    if grad_accum_steps < 1:
        raise ValueError(f"training.grad_accum_steps={grad_accum_steps} must be >= 1 (1 = off).")
    if batch_size is not None and batch_size % (grad_accum_steps * mesh.size):
        raise ValueError(f"training.batch_size={batch_size} is not divisible by "
                         f"training.grad_accum_steps={grad_accum_steps} x {mesh.size} devices; "
                         "use a multiple of their product.")


class PhasedStep:
    """The compiled step of the phase each step falls in (``builders.PhasedLoss``: Energy
    Matching's warm-up, then contrastive divergence). It counts the steps it has run from
    the state's step, so its calls must be consecutive steps of one run; the phase is a
    function of the step, so a resumed run takes the same steps."""

    def __init__(self, steps: list[Callable], starts: tuple[int, ...], first_step: int):
        self.steps, self.starts, self.next = steps, starts, int(first_step)

    def __call__(self, state: TrainState, batch: dict):
        phase = bisect.bisect_right(self.starts, self.next) - 1
        self.next += 1
        return self.steps[phase](state, batch)


def compile_train_step(loss_fn, tx, ema_decay: float, mesh: Mesh, state: TrainState, *,
                       grad_accum_steps: int = 1, batch_size: int | None = None):
    """``jax.jit`` of :func:`train_step` with data sharding, replication and donation.

    ``grad_accum_steps`` micro-batches per step; ``batch_size`` (global), when given, is
    checked to split into equal micro-batches on every device. A ``builders.PhasedLoss``
    gives a :class:`PhasedStep` (one compiled step per phase, starting at ``state.step``).
    """
    if isinstance(loss_fn, builders.PhasedLoss):
        steps = [compile_train_step(fn, tx, ema_decay, mesh, state,
                                    grad_accum_steps=grad_accum_steps, batch_size=batch_size)
                 for fn in loss_fn.loss_fns]
        return PhasedStep(steps, loss_fn.starts, int(first_replica(state.step)))
    _check_accum(int(grad_accum_steps), mesh, batch_size)
    replicated = NamedSharding(mesh, P())
    state_sharding = jax.tree.map(lambda _: replicated, state)
    step = functools.partial(train_step, loss_fn=loss_fn, tx=tx, ema_decay=ema_decay,
                             grad_accum_steps=int(grad_accum_steps))
    return jax.jit(step, in_shardings=(state_sharding, NamedSharding(mesh, P("data"))),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)


def fresh_state_and_step(s: settings.Settings, model: builders.Model,
                         mesh: Mesh) -> tuple[TrainState, Callable]:
    """A freshly initialized state, replicated on ``mesh``, and the compiled train step of
    the settings (what a run without a checkpoint starts from; benchmarks and checks use it)."""
    tx = make_optimizer(s.optim)
    state = replicate(init_state(model, tx, s.seed), mesh)
    return state, _compile_step(s, model, tx, mesh, state)


def _compile_step(s: settings.Settings, model: builders.Model, tx, mesh: Mesh,
                  state: TrainState):
    return compile_train_step(builders.build_loss_fn(s, model), tx, s.training.ema_decay,
                              mesh, state, grad_accum_steps=s.training.grad_accum_steps,
                              batch_size=s.training.batch_size)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local: dict, mesh: Mesh) -> dict:
    """A globally sharded batch from this process's slice of it."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def prefetch_to_device(batches: Iterator[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
    """``global_batch`` of each local batch, ``size`` batches ahead of the consumer.

    The copy of the next batch to the devices is issued before the current step is
    dispatched, so it overlaps the running step instead of following it; the order of
    batches is unchanged (resumed runs stay bit-identical).
    """
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for local in itertools.islice(batches, n):
            queue.append(global_batch(local, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def summarize(history: list[dict], step: int) -> dict[str, float]:
    """Means over the steps since the last log; raises if any step was not finite."""
    stacked = jax.device_get(history)
    finite = np.array([h["finite"] for h in stacked])
    if not finite.all():
        bad = step - len(stacked) + 1 + int(np.argmin(finite))
        error = NonFiniteLossError(f"the loss or its gradient became non-finite at step {bad}")
        error.step = bad
        raise error
    keys = [k for k in stacked[0] if k != "finite"]
    return {k: float(np.mean([h[k] for h in stacked])) for k in keys}


# A logged loss this many times the first one logged by the run means it diverged.
EXPLODED_LOSS_FACTOR = 1e6
divergence_advice = divergence.advice


def restore_or_init(ckpt: checkpoints.Checkpointer, model, tx, seed: int, mesh) -> TrainState:
    """The newest checkpoint of the workdir that loads if there is one, else a fresh state
    (initialized from ``seed``)."""
    state = replicate(init_state(model, tx, seed), mesh)
    if ckpt.latest_step() is None:
        return state
    state = ckpt.restore(state)
    logging.info("resuming from checkpoint at step %d", int(state.step))
    return state


make_sample_fn = builders.make_sample_fn


def first_replica(x: jax.Array) -> np.ndarray:
    """A replicated array as numpy, on every process."""
    return np.asarray(x.addressable_data(0))


def write_samples(s: settings.Settings, state: TrainState, step: int, workdir: str, writer,
                  sample_fn) -> None:
    """Draws samples with the (EMA) params and writes a PNG and a TensorBoard image."""
    params = state.ema_params if s.sampling.use_ema else state.params
    key = jax.random.fold_in(jax.random.PRNGKey(s.seed + 1), step)
    samples, info = sample_fn(params, key)
    samples = first_replica(samples)
    if jax.process_index() != 0:
        return
    image = plotting.samples_image(samples)
    (epath.Path(workdir) / "samples").mkdir(parents=True, exist_ok=True)
    plotting.save_png(image, epath.Path(workdir) / "samples" / f"step_{step:08d}.png")
    plotting.save_png(image, epath.Path(workdir) / "samples.png")
    writer.write_images(step, {"samples": image[None]})
    nfe = {f"sample/{k}": float(np.mean(first_replica(v))) for k, v in info.items()
           if np.ndim(v) == 0}
    writer.write_scalars(step, nfe)


class _Loop(NamedTuple):
    settings: settings.Settings
    workdir: str
    mesh: Mesh
    step_fn: Callable
    sample_fn: Callable
    ckpt: checkpoints.Checkpointer
    writer: Any
    stats: dict  # "first_loss": the first loss logged here; "start": the step resumed from


def _diverged(loop: _Loop, message: str, bad_step: int | None = None) -> NonFiniteLossError:
    before_update = bad_step is not None and bad_step == loop.stats.get("start", 0) + 1
    advice = divergence_advice(loop.settings, loop.ckpt.latest_step(),
                               before_any_update=before_update)
    return NonFiniteLossError(f"{message}; {advice}")


def _flush(loop: _Loop, history: list, step: int) -> dict[str, float]:
    """Logs the metrics since the last flush (raising on a non-finite or exploded loss)."""
    if not history:
        return {}
    try:
        scalars = summarize(history, step)
    except NonFiniteLossError as e:
        raise _diverged(loop, str(e), getattr(e, "step", None)) from None
    history.clear()
    loop.writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
    workdir_lib.append_metrics(loop.workdir, dict(scalars, step=step, split="train",
                                                  wall_time=time.time()))
    first = loop.stats.setdefault("first_loss", abs(scalars["loss"]))
    if abs(scalars["loss"]) > EXPLODED_LOSS_FACTOR * max(first, 1e-8):
        raise _diverged(loop, f"the loss exploded to {scalars['loss']:.3g} by step {step} "
                        f"(the run's first logged loss was {first:.3g})")
    return scalars


def _all_finite(tree: Any) -> bool:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return bool(first_replica(jnp.all(jnp.stack(leaves))))


def _save(loop: _Loop, step: int, state: TrainState) -> None:
    """Checkpoints ``state`` unless its parameters are not finite (then stops the run).

    The config is committed to the workdir just before the first checkpoint it trained:
    a run that stops before (a divergence, a bad value found late) leaves no config.json
    that would refuse the corrected command, and no checkpoint exists without its config.
    """
    if not _all_finite((state.params, state.ema_params)):
        raise _diverged(loop, f"the parameters became non-finite by step {step}")
    if not loop.stats.get("committed"):
        workdir_lib.commit(loop.settings, loop.workdir, loop.stats.get("start", 0))
        loop.stats["committed"] = True
    loop.ckpt.save(step, state)


def _run_steps(loop: _Loop, state: TrainState, data_iter, watcher) -> TrainState:
    """The loop body: steps, logs, checkpoints, sample grids, preemption.

    No host sync per step: metrics stay on the device until the next log, the state is
    donated, and batches reach the device ahead of their step (``prefetch_to_device``).
    A state is checkpointed only after every step since the last log was finite.
    """
    schedule = loop.settings.training
    hooks = [writers.ReportProgress(schedule.n_iters, loop.writer)]
    history: list = []
    start = int(state.step)
    loop.stats["start"] = start
    for step in range(start + 1, schedule.n_iters + 1):
        if watcher.should_stop(step - 1):
            _flush(loop, history, step - 1)
            if step - 1 > start:  # at most once: a step saved just before is not saved again
                _save(loop, step - 1, state)
            break
        state, metrics = loop.step_fn(state, next(data_iter))
        history.append(metrics)
        for hook in hooks:
            hook(step)
        last = step == schedule.n_iters
        if step % schedule.log_every == 0 or step % schedule.checkpoint_every == 0 or last:
            _flush(loop, history, step)
        if step % schedule.checkpoint_every == 0 or last:
            _save(loop, step, state)
        if schedule.sample_every and (step % schedule.sample_every == 0 or last):
            write_samples(loop.settings, state, step, loop.workdir, loop.writer,
                          loop.sample_fn)
    return state


def train_and_evaluate(s: settings.Settings, workdir: str, *,
                       allow_config_change: bool = False) -> TrainState:
    """Trains the model of the settings in ``workdir``, resuming from its latest checkpoint.

    Leaves in ``workdir``: ``config.json`` (written with the first checkpoint),
    ``checkpoints/``, TensorBoard event files, ``metrics.jsonl`` (one JSON line per log
    step) and ``samples.png`` (+ ``samples/``; none with ``training.sample_every=0``). The
    workdir is locked for the run (``runlock``: a second run on it is refused). A SIGTERM
    (or, from ``main``, a Ctrl-C) stops the run after saving its step once; the returned
    state's step is then below ``training.n_iters``.

    Args:
      s: the experiment's settings, ``settings.from_config(config)``.
      workdir: the run's directory.
      allow_config_change: resume even if fields that are unsafe to change on resume
        differ from ``workdir/config.json`` (the changes are recorded in the workdir).

    Raises:
      TypeError: ``s`` is not a Settings (e.g. a ConfigDict).
      UserError: a bad config value, workdir or data, another run in the workdir, a full
        disk, or a divergence (one sentence).
    """
    settings.require(s)
    mesh = make_mesh()
    preflight.check(s, num_devices=mesh.size)
    workdir_lib.prepare_for_writing(workdir)
    with runlock.hold(workdir):
        has_checkpoints = checkpoints.newest_on_disk(workdir) is not None
        workdir_lib.check_workdir(
            s, workdir, allow_changes=allow_config_change, training=True,
            same_network=functools.partial(_same_network, s) if has_checkpoints else None)
        state, directory = _build_and_train(s, workdir, mesh)
    if int(state.step) < s.training.n_iters:
        saved = (f"its checkpoint is saved in {directory}" if int(state.step) > 0
                 else "nothing was trained yet")
        logging.warning("stopped at step %d: %s; rerun the same command to resume",
                        int(state.step), saved)
    else:
        logging.info("finished at step %d, params checksum %r", int(state.step),
                     params_checksum(state.params))
    return state


def _same_network(s: settings.Settings, saved: dict) -> bool:
    """Whether the saved config's network has the parameter shapes of ``s``'s (True when
    the saved config, completed with today's fields, cannot be built: the restore decides)."""
    try:
        old = builders.param_shapes(settings.override(s, workdir_lib.flatten(saved)))
    except Exception:  # noqa: BLE001 - an old or partial config.json: cannot tell
        return True
    return old == builders.param_shapes(s)


def _build_and_train(s: settings.Settings, workdir: str, mesh: Mesh) -> tuple[TrainState, Any]:
    model = builders.build_model(s)
    tx = make_optimizer(s.optim)
    ckpt = checkpoints.Checkpointer(workdir, s.training.keep_checkpoints,
                                    set_aside_broken=True)
    try:
        return _train(s, workdir, mesh, model, tx, ckpt), ckpt.directory
    finally:
        ckpt.close()


def _train(s: settings.Settings, workdir: str, mesh: Mesh, model, tx, ckpt) -> TrainState:
    """Restores or initializes the state, builds the step, data and writer, and trains."""
    state = restore_or_init(ckpt, model, tx, s.seed, mesh)
    logging.info("model has %d parameters", num_params(state.params))
    step_fn = _compile_step(s, model, tx, mesh, state)
    writer = writers.create_writer(workdir, just_logging=jax.process_index() > 0)
    data_iter = prefetch_to_device(data_lib.get_dataset(
        s.data, batch_size=s.training.batch_size, split="train", seed=s.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=int(state.step)), mesh)
    loop = _Loop(s, workdir, mesh, step_fn, make_sample_fn(s, model), ckpt, writer, {})
    try:
        with checkpoints.PreemptionWatcher() as watcher:
            return _run_steps(loop, state, data_iter, watcher)
    finally:
        writer.close()


def params_checksum(params: Any) -> float:
    """Sum of |p| over all parameters: a cheap fingerprint to compare runs and processes."""
    total = sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in jax.tree.leaves(params))
    return float(first_replica(jnp.asarray(total)))


def num_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
