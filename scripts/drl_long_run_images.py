"""Steady long-run MCMC check of a trained DRL image model (Gao et al. 2021, Sec. 6).

Loads the latest checkpoint of a DRL run (EMA params if ``sampling.use_ema``), draws
``--num_chains`` samples by progressive sampling (Algorithm 2), then runs the learned
level-0 conditional chain p(y_0 | x_1) for ``--chain_steps`` steps (10,000 by default,
333x the K = 30 steps of training) from the x_1 of those samples, with the config's
level-0 step size and ``drl.metropolis``. Snapshots are mapped back to data space
(x_0 = y_0 / a'_0). Writes, in ``WORKDIR/long_run/``:

* ``long_run.png``: 16 chains per row; the first row is 16 test digits, the second the
  progressive sample, then one row per snapshot step (step 0 is the chain's start x_1,
  the noisy image it is conditioned on);
* ``long_run.json``: per snapshot, the Frechet distance to the test set in the feature
  space of the offline digits classifier (``fd``; ``evaluate.offline_classifier``, cached
  in ``WORKDIR/classifier`` unless ``eval.classifier_dir`` is set), the pixel std and the
  mean log p(y_0 | x_1); the chain's acceptance; and two reference numbers: the FD of the
  progressive samples, and ``fd_real_same_n``, the FD of ``num_chains`` training images to
  the test set (the floor of an FD estimated from that many samples). ``fd_drift`` is
  FD(last snapshot) - FD(progressive samples), the number the paper's claim is about.

With ``--start=data`` the chains start instead from test digits diffused to x_1 (is the
learned conditional steady, whatever the progressive sampler gives?); the first figure row
is those digits, ``fd_drift`` is measured from the step-K snapshot, and the outputs go to
``WORKDIR/long_run_from_data/``.

Cost: one energy gradient of ``num_chains`` images per chain step. 64 chains (the default;
the figure shows 16) x 10,000 steps of the digits C-ResNet took 279 s on 2 CPU cores shared
with another job; 256 chains would take ~4x that. An FD from 64 samples is noisy: 64 real
training digits give 4-9.5 against the test set, depending on the draw.

    python scripts/drl_long_run_images.py --config=configs/digits_drl.py \
        --workdir=runs/digits_drl --chain_steps=10000
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import builders, data, drl, evaluate, plotting, settings
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import results as records
from ebm_vs_score.metrics import distances

FIGURE_CHAINS = 16


def _fd(features_fn, images, reference_stats) -> float:
    mu, sigma = distances.feature_statistics(features_fn(images))
    return float(distances.frechet_distance(mu, sigma, *reference_stats))


def snapshot_steps(chain_steps: int, num_steps: int) -> list[int]:
    """0, K (the training chain length), then 100, 300, 1000, 3000 and the last step."""
    steps = {0, num_steps, 100, 300, 1000, 3000, chain_steps}
    return sorted(s for s in steps if s <= chain_steps)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a configs/*.py file with get_config()")
    p.add_argument("--workdir", required=True, help="the DRL run's workdir")
    p.add_argument("--chain_steps", type=int, default=10_000)
    p.add_argument("--num_chains", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", choices=("sample", "data"), default="sample",
                   help="chain start: x_1 of the progressive samples, or test digits diffused "
                        "to x_1 (writes WORKDIR/long_run_from_data/ instead)")
    args = p.parse_args(argv)
    if args.chain_steps < 1 or args.num_chains < 2:
        p.error("--chain_steps must be >= 1 and --num_chains >= 2 (an FD needs a covariance)")
    return args


def _figure(rows: np.ndarray, labels: Sequence[str], path: str) -> None:
    """Rows of images (R, C, H, W, 1) with a label per row, as a PNG."""
    num_rows, cols = rows.shape[:2]
    grid = plotting.image_grid(rows.reshape((-1,) + rows.shape[2:]), cols=cols)
    cell = rows.shape[2] + 1  # image_grid's pad is 1
    fig = plotting.new_figure(figsize=(0.45 * cols + 1.2, 0.45 * num_rows + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([1 + cell * (i + 0.5) for i in range(num_rows)], labels, fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    plotting.save_png(plotting.figure_to_array(fig), path)


def run(args: argparse.Namespace) -> dict:
    """The long-run check of ``args``; returns what it writes to ``long_run.json``."""
    config = runpy.run_path(args.config)["get_config"]()
    model = builders.build_model(config)
    step, params = evaluate.restore_params(config, args.workdir, model)
    energy = param_lib.bind(model.fns.energy, params)
    schedule = model.ladder
    chain_settings = settings.drl_settings(config.drl).chain
    k_sample, k_chain = jax.random.split(jax.random.PRNGKey(args.seed))
    shape = (args.num_chains,) + model.example_shape
    start = time.time()
    x0, info = jax.jit(lambda k: drl.drl_sample(energy, k, shape, schedule, chain_settings,
                                                keep_levels=True))(k_sample)
    x0 = np.asarray(x0)
    top_row, x1 = x0, info["levels"][1]
    test_x, _ = data.load_digits_split("test")
    if args.start == "data":
        if args.num_chains > len(test_x):
            raise ValueError(f"--start=data has {len(test_x)} test digits; use "
                             f"--num_chains <= {len(test_x)}")
        top_row = test_x[:args.num_chains]
        _, x1 = schedule.diffuse_pair(jax.random.fold_in(k_sample, 1), jnp.asarray(top_row),
                                      jnp.zeros((args.num_chains,), jnp.int32))
    sample_seconds = time.time() - start
    num_steps = int(config.drl.num_steps)
    steps = snapshot_steps(args.chain_steps, num_steps)
    chain = jax.jit(lambda key, x: drl.long_run_chain(
        energy, key, x, args.chain_steps, 0, schedule, chain_settings,
        snapshot_steps=steps))
    start = time.time()
    snaps, chain_info = chain(k_chain, x1)
    # y_0 = a'_0 x_0: snapshots back to data space (step 0 is x_1 itself, left as is).
    y_scale = float(schedule.y_scale(jnp.zeros((), jnp.int32)))
    snaps = np.asarray(snaps)
    snaps = np.concatenate([snaps[:1], snaps[1:] / y_scale])
    chain_seconds = time.time() - start

    clf = evaluate.offline_classifier(config, args.workdir)
    train_x, _ = data.load_digits_split("train")
    features = lambda images: clf.apply(np.clip(images, -1, 1))[0]  # noqa: E731
    reference = distances.feature_statistics(features(test_x))
    real = train_x[np.random.default_rng(args.seed).permutation(len(train_x))[:args.num_chains]]
    log_prob = np.asarray(chain_info["log_prob"])
    snapshots = [{"step": int(s), "fd": _fd(features, snaps[i], reference),
                  "pixel_std": float(snaps[i].std()), "log_prob": float(log_prob[i].mean())}
                 for i, s in enumerate(steps)]
    fd_sample = _fd(features, x0, reference)
    fd_k = snapshots[steps.index(min(num_steps, args.chain_steps))]["fd"]
    result = {
        "checkpoint_step": step, "start": args.start, "num_chains": args.num_chains,
        "chain_steps": args.chain_steps,
        "snapshots": snapshots,
        "acceptance": float(jnp.mean(chain_info["acceptance"])),
        "accept_prob": float(jnp.mean(chain_info["accept_prob"])),
        "fd_progressive_sample": fd_sample,
        "pixel_std_progressive_sample": float(x0.std()),
        "fd_drift": snapshots[-1]["fd"] - (fd_sample if args.start == "sample" else fd_k),
        "fd_real_same_n": _fd(features, real, reference),
        "pixel_std_data": float(test_x.std()),
        "classifier_accuracy": clf.accuracy,
        "seconds": {"progressive_sample": sample_seconds, "chain": chain_seconds},
        "drl": config.drl.to_dict(),
        "command": "python scripts/drl_long_run_images.py " + " ".join(
            f"--{k}={v}" for k, v in vars(args).items()),
    }
    out = os.path.join(args.workdir, "long_run" if args.start == "sample" else "long_run_from_data")
    os.makedirs(out, exist_ok=True)
    n = min(FIGURE_CHAINS, args.num_chains)
    rows = np.concatenate([top_row[None, :n], snaps[:, :n]])
    labels = [args.start] + [f"step {s}" if s else "x_1 (start)" for s in steps]
    if args.start == "sample":  # real test digits on top, to compare with
        rows = np.concatenate([test_x[None, :n], rows])
        labels = ["data (test)"] + labels
    _figure(rows, labels, os.path.join(out, "long_run.png"))
    with open(os.path.join(out, "long_run.json"), "w") as f:
        json.dump(result, f, indent=2)
    records.write_record(os.path.basename(out).replace("long_run", "drl_long_run"), result,
                         command=result["command"])
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    result = run(parse_args(argv))
    print(json.dumps({k: result[k] for k in ("fd_progressive_sample", "fd_real_same_n",
                                             "fd_drift", "acceptance", "seconds")}))
    for record in result["snapshots"]:
        print(json.dumps(record))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
