"""Two seed claims tested on exact models; prints markdown tables.

  python scripts/exact_model_claims.py --experiment=annealing [--seeds=3]
      Song & Ermon 2019, Fig. 3: mode weights of plain vs annealed Langevin with the exact
      score of 0.8 N(m1, I) + 0.2 N(m2, I), |m1 - m2| = 10, against the truth.
  python scripts/exact_model_claims.py --experiment=ais_vs_ode
      Gao et al. 2021, Table 4: NLL of an exact energy (E = -log p_t) by AIS and by the
      probability-flow ODE on the same points, against the exact NLL: 8 Gaussians (nats)
      and a 4-dim Gaussian on 256 levels (dequantized, bits/dim with offset 7).

The functions are ``ebm_vs_score.evaluate.exact_models``; tests/test_exact_models.py
asserts the same claims on smaller runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from ebm_vs_score import data
from ebm_vs_score import results as records
from ebm_vs_score.evaluate import exact_models

_EXPERIMENT = flags.DEFINE_enum("experiment", "annealing", ["annealing", "ais_vs_ode"],
                                "Which claim to test.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Independent repetitions (PRNG keys 0..seeds-1).")
_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Langevin chains per run (annealing).")


def annealing_table(seeds: int, num_samples: int, outs: dict) -> list[str]:
    """The table; each seed's result goes into ``outs`` (the record's values)."""
    lines = ["| seed | truth (w1, w2) | plain Langevin | annealed Langevin | "
             "max error plain | max error annealed |", "|---|---|---|---|---|---|"]
    for seed in range(seeds):
        out = exact_models.annealing_experiment(jax.random.PRNGKey(seed),
                                                num_samples=num_samples)
        outs[f"seed {seed}"] = out
        fmt = lambda w: f"({w[0]:.3f}, {w[1]:.3f})"  # noqa: E731
        lines.append(f"| {seed} | {fmt(out['truth'])} | {fmt(out['plain'])} | "
                     f"{fmt(out['annealed'])} | {out['plain_error']:.3f} | "
                     f"{out['annealed_error']:.3f} |")
    return lines


def ais_vs_ode_table(seeds: int, outs: dict) -> list[str]:
    """The table; each (model, seed) result goes into ``outs`` (the record's values)."""
    cases = [("8gaussians (nats)", data.toy_mixture("8gaussians"), None, "nats"),
             ("4-dim Gaussian, 256 levels (bits/dim)",
              data.GaussianMixture(jnp.ones(1), jnp.zeros((1, 4)), jnp.full((1,), 0.4)),
              256, "bpd")]
    lines = ["| model | seed | exact NLL | ODE NLL (exact div.) | AIS NLL | AIS log Z ± |",
             "|---|---|---|---|---|---|"]
    for name, mixture, bins, unit in cases:
        for seed in range(seeds):
            out = exact_models.ais_vs_ode(jax.random.PRNGKey(seed), mixture, num_bins=bins)
            outs[f"{name} seed {seed}"] = out
            lines.append(
                f"| {name} | {seed} | {out[f'exact_nll_{unit}']:.4f} | "
                f"{out[f'nll_{unit}']:.4f} ± {out[f'nll_{unit}_stderr']:.3f} | "
                f"{out[f'ais_nll_{unit}']:.4f} ± {out[f'ais_nll_{unit}_stderr']:.3f} | "
                f"{out['ais_log_z']:.4f} ± {out['ais_log_z_stderr']:.4f} |")
    return lines


def main(argv):
    del argv
    load, outs = records.load_average(), {}
    if _EXPERIMENT.value == "annealing":
        lines = annealing_table(_SEEDS.value, _SAMPLES.value, outs)
    else:
        lines = ais_vs_ode_table(_SEEDS.value, outs)
    print("\n".join(lines))
    records.write_record(f"exact_model_claims_{_EXPERIMENT.value}", outs, load_start=load)


if __name__ == "__main__":
    app.run(main)
