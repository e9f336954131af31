"""Does amortized L_QC keep the NAsym drop of the full regularizer? (issue #15)

    python scripts/qc_amortization.py --config=configs/digits_qc.py --workdir=runs/qc_amort \
        --config.training.qc_weight=1.0 --config.training.n_iters=1000 --fraction=1,0.25

Trains, in ``WORKDIR/<name>``, U (``qc_weight=0``) and QC with L_QC taken on each share
of the batch in ``--fraction`` (a uniform subset of an i.i.d. batch: the same expected
gradient, ``losses.amortized_qc``), all with the config's other fields, then prints NAsym
(Chao et al. 2023, eq. 7; over the test digits and 10 noise levels, 4 Hutchinson probes)
and the training steps/s of each. Finished runs are reused. ``--config.*`` overrides work
as in ``main``.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ebm_vs_score import builders, settings, train
from ebm_vs_score import data as data_lib
from ebm_vs_score import results as records
from ebm_vs_score.evaluate import fields, restore_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "A QC config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the runs.")
_FRACTION = flags.DEFINE_list("fraction", ["1", "0.25"],
                              "training.qc_fraction values to compare.")
flags.mark_flags_as_required(["config", "workdir"])


def variants(config, fractions: list[float]) -> dict:
    """``{name: config}``: U, then QC on each share of the batch (L_QC on every step)."""
    out = {"U": config.copy_and_resolve_references()}
    out["U"].training.qc_weight = 0.0
    for f in fractions:
        name = f"QC on {f:g} of the batch"
        out[name] = config.copy_and_resolve_references()
        out[name].training.qc_fraction = f
        out[name].training.qc_every = 1
    return out


def steps_per_s(workdir: str) -> float:
    """Steps/s between the first and the last train record of ``metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [r for r in map(json.loads, f) if r.get("split") == "train"]
    return (recs[-1]["step"] - recs[0]["step"]) / (recs[-1]["wall_time"] - recs[0]["wall_time"])


def nasym(s, workdir: str) -> float:
    """Mean NAsym of the run's EMA score over the test digits and 10 noise levels."""
    model = builders.build_model(s)
    _, params = restore_params(s, workdir, model)
    x, _ = data_lib.load_digits_split("test")
    out = fields.asymmetry_metrics(model.fns.score, params, x, jax.random.PRNGKey(0),
                                   sde=model.sde, num_levels=10, num_probes=4)
    return out["nasym"]


def x_test():
    return data_lib.load_digits_split("test")[0]


def main(argv):
    del argv
    load = records.load_average()
    rows = []
    for name, config in variants(_CONFIG.value, [float(f) for f in _FRACTION.value]).items():
        workdir = os.path.join(_WORKDIR.value, name.replace(" ", "_"))
        s = settings.from_config(config)
        train.train_and_evaluate(s, workdir)
        rows.append((name, s.loss.qc_weight, nasym(s, workdir), steps_per_s(workdir)))
    print("| run | λ | NAsym | train steps/s |\n|---|---|---|---|")
    for name, lam, value, speed in rows:
        print(f"| {name} | {lam:g} | {value:.5f} | {speed:.2f} |")
    records.write_record("qc_amortization", {"runs": {
        name: {"qc_weight": lam, "nasym": records.measurement(value, n=len(x_test())),
               "steps_per_s": speed} for name, lam, value, speed in rows}}, load_start=load)
    return np.asarray([r[2] for r in rows])


if __name__ == "__main__":
    app.run(main)
