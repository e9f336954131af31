"""Steady long-run MCMC check for diffusion recovery likelihood on a 2-D toy.

Gao et al., "Learning Energy-Based Models by Diffusion Recovery Likelihood", ICLR 2021,
Sec. 6: unlike EBMs trained with short-run MCMC, the conditional chains of a DRL model can
run far beyond the K training steps and still produce realistic samples. This script trains
a small DRL energy on a toy with a known density, samples it progressively (Algorithm 2),
then runs the level-0 chains for many steps and prints, at each snapshot, the MMD^2 of the
chain to held-out data (next to the MMD^2 between two true sample sets) and the mean
log-density of the chains. A steady model keeps both flat.

    python scripts/drl_long_run.py --train_steps=20000 --chain_steps=100000

Prints one JSON object per line; ``--out`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ebm_vs_score import data, drl, settings
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score.metrics.distances import mmd
from ebm_vs_score.models import MLP

BANDWIDTHS = [0.1, 0.3, 1.0]
CHUNK = 1000  # training steps per compiled scan, between progress lines


def drl_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        num_levels=args.num_levels, num_steps=args.num_steps, step_size=args.step_size,
        metropolis=args.metropolis, step_schedule=args.step_schedule))


def train(args: argparse.Namespace, cfg, emit) -> tuple:
    """Adam (clipped, as the train loop) on fresh toy batches; returns (energy_fn, params)."""
    schedule = drl.make_schedule(cfg.num_levels)
    net = MLP(hidden=tuple(args.hidden), out="scalar", embedding_dim=32)
    fns = drl.model_fns("resnet_energy", net, schedule, 1.0)
    params = net.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss_fn = drl.make_drl_loss(fns.energy, schedule, cfg.chain)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))

    @jax.jit
    def run(params, opt, batches, start):
        def step(carry, x):
            params, opt, i = carry
            key = jax.random.fold_in(jax.random.PRNGKey(args.seed), i)
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, {"x": x}, key)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt, i + 1), dict(metrics, loss=loss)
        (params, opt, _), metrics = jax.lax.scan(step, (params, opt, start), batches)
        return params, opt, jax.tree.map(jnp.mean, metrics)

    opt, rng, start = tx.init(params), np.random.default_rng(args.seed), time.time()
    for done in range(0, args.train_steps, CHUNK):
        n = min(CHUNK, args.train_steps - done)
        batches = np.stack([data.sample_toy(args.toy, rng, args.batch_size) for _ in range(n)])
        params, opt, metrics = run(params, opt, jnp.asarray(batches), done)
        emit(dict({k: float(v) for k, v in metrics.items()}, phase="train", step=done + n,
                  seconds=round(time.time() - start, 1)))
    return fns.energy, params


def mode_occupancy(toy: str, x: np.ndarray) -> dict:
    """Fraction of samples nearest each mixture component, and the RMS per-coordinate
    distance to it (the component std if the samples are right)."""
    means = np.asarray(data.toy_mixture(toy).means)
    dist = np.linalg.norm(x[:, None] - means[None], axis=-1)
    weights = np.bincount(dist.argmin(1), minlength=len(means)) / len(x)
    spread = np.sqrt(np.mean(dist.min(1) ** 2) / x.shape[1])
    return {"mode_weights": np.round(weights, 3).tolist(), "mode_spread": float(spread)}


def check_long_run(args: argparse.Namespace, cfg, energy, emit) -> None:
    """Progressive samples, then level-0 conditional and marginal chains for many steps."""
    schedule = drl.make_schedule(cfg.num_levels)
    held_out = data.sample_toy(args.toy, 2, args.num_chains)
    reference = mmd(data.sample_toy(args.toy, 1, args.num_chains), held_out, BANDWIDTHS)
    samples, info = jax.jit(lambda k: drl.drl_sample(energy, k, (args.num_chains, 2), schedule,
                                                 cfg.chain))(
        jax.random.PRNGKey(args.seed + 1))
    emit(dict(phase="progressive", mmd=mmd(np.asarray(samples), held_out, BANDWIDTHS),
              mmd_reference=reference, acceptance=float(info["acceptance"]), nfe=int(info["nfe"])))
    level0 = jnp.zeros((args.num_chains,), jnp.int32)
    x_data = jnp.asarray(data.sample_toy(args.toy, 3, args.num_chains))
    _, x_tilde = schedule.diffuse_pair(jax.random.PRNGKey(args.seed + 2), x_data, level0)
    starts = {"conditional": x_tilde, "marginal": samples * schedule.y_scale(level0)[:, None]}
    snapshot_steps = np.unique(np.r_[0, np.geomspace(1, args.chain_steps, 12).astype(int)])
    for kind, x0 in starts.items():
        snaps, info = jax.jit(lambda k, x0=x0, kind=kind: drl.long_run_chain(
            energy, k, x0, args.chain_steps, 0, schedule, cfg.chain,
            snapshot_steps=snapshot_steps,
            conditional=kind == "conditional"))(jax.random.PRNGKey(args.seed + 3))
        scale = float(schedule.y_scale(level0[:1])[0])
        for step, snap, log_prob in zip(info["steps"], snaps, info["log_prob"], strict=True):
            x = np.asarray(snap) / scale
            emit(dict(phase=f"long_run_{kind}", step=int(step), mmd_reference=reference,
                      mmd=mmd(x, held_out, BANDWIDTHS), mean_log_prob=float(jnp.mean(log_prob)),
                      **mode_occupancy(args.toy, x)))
        emit(dict(phase=f"long_run_{kind}", acceptance=float(jnp.mean(info["acceptance"]))))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", default="8gaussians", choices=["8gaussians", "gmm"])
    p.add_argument("--train_steps", type=int, default=20_000)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--num_levels", type=int, default=6)
    p.add_argument("--num_steps", type=int, default=30, help="K, Langevin steps per level")
    p.add_argument("--step_size", type=float, default=0.1, help="b^2")
    p.add_argument("--step_schedule", default="sigma", choices=list(drl.STEP_SCHEDULES))
    p.add_argument("--metropolis", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--chain_steps", type=int, default=100_000)
    p.add_argument("--num_chains", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON lines here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cfg = settings.drl_settings(drl_config(args))
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    try:
        energy_fn, params = train(args, cfg, emit)
        check_long_run(args, cfg, param_lib.bind(energy_fn, params), emit)
    finally:
        if out:
            out.close()


if __name__ == "__main__":
    main()
