"""Steady long-run MCMC check of a trained DRL image model (Gao et al. 2021, Sec. 6).

Loads the latest checkpoint of a DRL run, draws samples by progressive sampling
(Algorithm 2), then runs the learned level-0 conditional chain p(y_0 | x_1) for many
steps (10,000 by default, 333x the K = 30 steps it was trained with) from the x_1 of those
samples. Writes, in ``WORKDIR/long_run/``:

* ``long_run.png``: one row per snapshot step (0 = the progressive sample), 16 chains;
* ``long_run.json``: per snapshot, the Frechet distance in the offline digits
  classifier's feature space to the test set (``fd``; its drift is the number the paper's
  claim is about), the mean pixel std and the chain's acceptance.

    python scripts/drl_long_run_images.py --config=configs/digits_drl.py \
        --workdir=runs/digits_drl --chain_steps=10000
"""

from __future__ import annotations

import argparse
import json
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import builders, data, drl, evaluate, plotting
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score.metrics import classifier as clf_lib
from ebm_vs_score.metrics import distances


def _fd(features_fn, images, reference_stats) -> float:
    mu, sigma = distances.feature_statistics(features_fn(images))
    return float(distances.frechet_distance(mu, sigma, *reference_stats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--chain_steps", type=int, default=10_000)
    p.add_argument("--num_chains", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = runpy.run_path(args.config)["get_config"]()
    model = builders.build_model(config)
    _, params = evaluate.restore_params(config, args.workdir, model)
    energy = param_lib.bind(model.fns.energy, params)
    k_sample, k_chain = jax.random.split(jax.random.PRNGKey(args.seed))
    shape = (args.num_chains,) + model.example_shape
    x0, info = jax.jit(lambda k: drl.drl_sample(energy, k, shape, config.drl,
                                                schedule=model.sde, keep_levels=True))(k_sample)
    x1 = info["levels"][1]
    steps = sorted({0, 30, 100, 300, 1000, 3000, args.chain_steps})
    steps = [s for s in steps if s <= args.chain_steps]
    run = jax.jit(lambda k, x: drl.long_run_chain(
        energy, k, x, args.chain_steps, 0, config.drl, snapshot_steps=steps,
        schedule=model.sde))
    snaps, chain_info = run(k_chain, x1)
    snaps = np.asarray(snaps)
    test_x, _ = data.load_digits_split("test")
    train_x, train_y = data.load_digits_split("train")
    out = os.path.join(args.workdir, "long_run")
    clf = clf_lib.get_classifier(train_x, train_y, os.path.join(out, "classifier"))
    reference = distances.feature_statistics(clf.apply(test_x)[0])
    features = lambda images: clf.apply(np.clip(images, -1, 1))[0]  # noqa: E731
    records = [{"step": int(s), "fd": _fd(features, snaps[i], reference),
                "pixel_std": float(snaps[i].std())} for i, s in enumerate(steps)]
    records[0]["fd_progressive_sample"] = _fd(features, np.asarray(x0), reference)
    acc = float(jnp.mean(chain_info["acceptance"]))
    rows = snaps[:, :16].reshape((-1,) + snaps.shape[2:])  # one row of 16 per snapshot
    plotting.save_png(plotting.upscale(plotting.image_grid(rows, cols=16), 4),
                      os.path.join(out, "long_run.png"))
    with open(os.path.join(out, "long_run.json"), "w") as f:
        json.dump({"snapshots": records, "acceptance": acc,
                   "command": "python scripts/drl_long_run_images.py " + " ".join(
                       f"--{k}={v}" for k, v in vars(args).items())}, f, indent=2)
    for r in records:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
