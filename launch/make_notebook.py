"""Writes ``launch/colab.ipynb`` from the cells below, so that the notebook is reviewed here.

    python launch/make_notebook.py          # (re)write launch/colab.ipynb
    python launch/make_notebook.py --check  # exit 1 if the committed notebook is stale

The notebook trains the three families U, C and QC on a 2-D toy in a couple of minutes on
a CPU runtime, compares their score fields, curl and Asym, samples them with annealed
Langevin and (energy only) MALA, and shows a grid of digits from a short energy run.
``EBM_NOTEBOOK_FAST=1`` shrinks every run to a few steps (for the test that executes it).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parent / "colab.ipynb"
# Where `pip install` gets the package on Colab; EBM_VS_SCORE_PIP overrides it.
PIP_SPEC = "git+https://github.com/ebm-vs-score/ebm_vs_score.git"

CELLS = [
    ("markdown", """
        # Energy or score? U, C and QC on a 2-D toy

        Three ways to parameterize a diffusion model, trained with the same network, noise
        process and objective (see `DESIGN.md`):

        * **U** — an unconstrained score network, `s = (f(x, t) - x) / scale(t)`;
        * **C** — an energy `E = ‖x - f(x, t)‖² / (2 scale(t))` whose score `s = -∇ₓE` is
          conservative by construction (Salimans & Ho, 2021);
        * **QC** — U trained with the quasi-conservative penalty on the asymmetry of its
          Jacobian (Chao et al., 2023).

        A gradient field has no curl: `∂s_y/∂x − ∂s_x/∂y = 0` and `Asym = ½‖J − Jᵀ‖²_F = 0`.
        Only C has an energy, so only C can be sampled with Metropolis-adjusted Langevin
        (MALA). Runs on a CPU runtime in a couple of minutes.
        """),
    ("code", f"""
        # Install the package unless it is already importable (e.g. in a local checkout).
        import importlib.util
        import os
        import subprocess
        import sys

        PIP_SPEC = os.environ.get("EBM_VS_SCORE_PIP", "{PIP_SPEC}")
        if importlib.util.find_spec("ebm_vs_score") is None:
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", PIP_SPEC])

        # Before JAX starts: XLA's Eigen convolutions on a CPU runtime (ebm_vs_score/hostcpu.py).
        importlib.import_module("ebm_vs_score.hostcpu").use_fast_cpu_kernels()
        """),
    ("code", """
        import tempfile
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np

        from ebm_vs_score import (
            builders,
            checkpoints,
            config_base,
            conservativeness,
            data,
            parameterization,
            plotting,
            samplers,
            settings,
            train,
        )

        FAST = os.environ.get("EBM_NOTEBOOK_FAST") == "1"  # a few steps only (tests)
        TOY_ITERS = 20 if FAST else 2000
        SAMPLE_STEPS = 20 if FAST else 200
        WORKROOT = os.environ.get("EBM_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="ebm_")
        print("devices:", jax.devices(), "| runs in", WORKROOT)
        """),
    ("markdown", """
        ## Train U, C and QC

        `settings.from_config(config)` checks a config once and turns it into typed
        settings; `train.train_and_evaluate(settings, workdir)` is what
        `python -m ebm_vs_score.main` runs with them: it checkpoints into `workdir`, resumes
        from it when run again, and returns the final train state. The runs here are short,
        so the EMA decay is lowered to 0.99.
        QC's weight λ (`training.qc_weight`) is raised to 1 for the 2-D toy: at the config's
        default (1e-4, sized for images) the penalty is a negligible part of the loss here,
        and QC trains like U.
        """),
    ("code", """
        FAMILIES = {"U": "score", "C": "energy", "QC": "qc"}


        def short_run(config, n_iters):
            \"\"\"The settings of n_iters steps, with one checkpoint and one sample grid at
            the end.\"\"\"
            config.training.n_iters = n_iters
            config.training.log_every = max(n_iters // 5, 1)
            config.training.checkpoint_every = n_iters
            config.training.sample_every = n_iters
            config.training.ema_decay = 0.99
            config.sampling.num_steps = SAMPLE_STEPS
            return settings.from_config(config)


        configs, models, params = {}, {}, {}
        for name, family in FAMILIES.items():
            config = config_base.get_config("toy", family)
            if name == "QC":
                config.training.qc_weight = 1.0
            configs[name] = short_run(config, TOY_ITERS)
            start = time.time()
            state = train.train_and_evaluate(configs[name], os.path.join(WORKROOT, family))
            models[name] = builders.build_model(configs[name])
            params[name] = state.ema_params
            print(f"{name}: {int(state.step)} steps in {time.time() - start:.0f} s")
        """),
    ("markdown", """
        In a new session, the same params come back from the workdir's latest checkpoint:
        """),
    ("code", """
        def load_state(s, workdir):
            \"\"\"The latest checkpointed train state of a run of settings ``s``.\"\"\"
            model = builders.build_model(s)
            template = train.init_state(model, train.make_optimizer(s.optim), s.seed)
            ckpt = checkpoints.Checkpointer(workdir)
            try:
                return ckpt.restore(template)
            finally:
                ckpt.close()


        restored = load_state(configs["C"], os.path.join(WORKROOT, "energy"))
        same = jax.tree.map(np.array_equal, restored.ema_params, params["C"])
        print("step", int(restored.step), "| restored params identical:",
              all(jax.tree.leaves(same)))
        """),
    ("markdown", """
        ## Score fields, curl and Asym

        Arrows: the score `s(x, t)` at a small noise level. Colour: the curl
        `∂s_y/∂x − ∂s_x/∂y`, from the per-point Jacobian by `jax.jacfwd`. Titles: the mean
        `Asym` and `NAsym` over the grid (`conservativeness.asymmetry`, exact Jacobian).
        C's curl is zero up to float round-off; U's is not; QC's is pushed towards zero.
        """),
    ("code", """
        %matplotlib inline
        # (the sample plots written during training switch matplotlib to a file backend)
        T_PLOT, LIM = 0.05, 2.5


        def score_field(name, t=T_PLOT):
            \"\"\"The model's score at time t as a batch -> batch map (params bound).\"\"\"
            score = parameterization.bind(models[name].fns.score, params[name])
            return lambda x: score(x, jnp.full((x.shape[0],), t))


        def curl(field, x):
            \"\"\"ds_y/dx - ds_x/dy at each point of x (B, 2).\"\"\"
            jac = jax.vmap(jax.jacfwd(lambda p: field(p[None])[0]))(x)  # jac[b, i, j] = ds_i/dx_j
            return jac[:, 1, 0] - jac[:, 0, 1]


        ticks = np.linspace(-LIM, LIM, 60)
        grid = jnp.asarray(np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2), jnp.float32)
        arrows = grid.reshape(60, 60, 2)[::4, ::4].reshape(-1, 2)
        curls, asyms = {}, {}
        for name in FAMILIES:
            field = jax.jit(score_field(name))
            curls[name] = np.asarray(curl(field, grid)).reshape(60, 60)
            asym, nasym = conservativeness.asymmetry(field, grid, num_probes=0)
            asyms[name] = (float(asym.mean()), float(nasym.mean()))

        vmax = max(np.abs(c).max() for c in curls.values()) or 1.0
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        for ax, name in zip(axes, FAMILIES, strict=True):
            image = ax.imshow(curls[name], origin="lower", extent=(-LIM, LIM, -LIM, LIM),
                              cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            s = np.asarray(score_field(name)(arrows))
            s = s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-8)
            ax.quiver(arrows[:, 0], arrows[:, 1], s[:, 0], s[:, 1], scale=40, width=0.003)
            asym, nasym = asyms[name]
            ax.set_title(f"{name}: Asym {asym:.2e}, NAsym {nasym:.2e}")
            ax.set_aspect("equal")
        fig.colorbar(image, ax=axes, shrink=0.8, label="curl  ∂s_y/∂x − ∂s_x/∂y")
        plt.show()
        """),
    ("markdown", """
        ## Sampling: annealed Langevin for all three, MALA only with an energy

        `samplers.sample(method, key, shape, sde=..., score_fn=..., energy_fn=..., num_steps=...)`
        is one compiled `lax.scan`; `info["nfe"]` counts network evaluations and MALA
        reports its acceptance rate. A score-only model has no energy for the
        Metropolis-Hastings ratio, so MALA refuses it.
        """),
    ("code", """
        NUM_SAMPLES = 256 if FAST else 2048
        # NCSN's step schedule: step_size is the Langevin step at the smallest noise level.
        LANGEVIN = {"step_size": 2e-5, "n_steps_each": 1 if FAST else 5}


        def draw(name, method, seed=0):
            \"\"\"Samples of model `name` with `method` (its other options from the config).\"\"\"
            s = settings.override(configs[name], {
                "sampling.method": method,
                **{f"sampling.{k}": v for k, v in LANGEVIN.items()}})
            model, p = models[name], params[name]
            run = jax.jit(lambda key: samplers.sample(
                method, key, (NUM_SAMPLES,) + model.example_shape, sde=model.sde,
                score_fn=parameterization.bind(model.fns.score, p),
                energy_fn=parameterization.bind(model.fns.energy, p),
                num_steps=SAMPLE_STEPS, **s.sampling.options))
            samples, info = run(jax.random.PRNGKey(seed))
            return np.asarray(samples), jax.device_get(info)


        runs = {f"{name} · ALD": draw(name, "ald") for name in FAMILIES}
        runs["C · MALA"] = draw("C", "mala")
        try:
            draw("U", "mala")
        except ValueError as e:
            print("U with MALA:", e)

        reference = data.sample_toy(configs["U"].data.dataset, 0, NUM_SAMPLES)
        fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4))
        for ax, (title, (samples, info)) in zip(axes, runs.items(), strict=True):
            ax.scatter(reference[:, 0], reference[:, 1], s=1, c="tab:gray", alpha=0.3)
            ax.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:blue")
            extra = f", acceptance {float(np.mean(info['acceptance'])):.2f}" \\
                if "acceptance" in info else ""
            ax.set_title(f"{title} (NFE {int(np.mean(info['nfe']))}{extra})")
            ax.set_xlim(-LIM - 0.5, LIM + 0.5)
            ax.set_ylim(-LIM - 0.5, LIM + 0.5)
            ax.set_aspect("equal")
        plt.show()
        """),
    ("markdown", """
        ## Digits: a short energy (C) run

        The same code on 8×8 images (scikit-learn digits) with the energy U-Net. A hundred
        and fifty steps give rough shapes only; `configs/digits_energy.py` trains for 3000.
        `train.make_sample_fn(settings, model)` is the config's sampler, compiled once.
        """),
    ("code", """
        digits = config_base.get_config("digits", "energy")
        digits.training.batch_size = 32 if FAST else 64
        digits.sampling.num_samples = 16 if FAST else 64
        digits = short_run(digits, 10 if FAST else 150)
        state = train.train_and_evaluate(digits, os.path.join(WORKROOT, "digits_energy"))
        model = builders.build_model(digits)
        sample_fn = train.make_sample_fn(digits, model)  # jitted samplers.sample of the config
        samples, info = sample_fn(state.ema_params, jax.random.PRNGKey(1))
        plt.figure(figsize=(5, 5))
        plt.imshow(plotting.samples_image(np.asarray(samples)))
        plt.title(f"C on digits, {int(state.step)} steps, {digits.sampling.method}")
        plt.axis("off")
        plt.show()
        """),
    ("markdown", """
        Every run left TensorBoard logs, `metrics.jsonl`, checkpoints and `samples.png` in
        its workdir under `WORKROOT`. To train at scale, see `launch/README.md`.
        """),
]


def build() -> nbformat.NotebookNode:
    """The notebook: no outputs, deterministic cell ids, Colab and kernel metadata."""
    nb = nbformat.v4.new_notebook()
    makers = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    for i, (kind, source) in enumerate(CELLS):
        cell = makers[kind](textwrap.dedent(source).strip("\n"))
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nb.metadata = {
        "colab": {"name": "ebm_vs_score.ipynb", "provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="Exit 1 if launch/colab.ipynb differs from what this writes.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not NOTEBOOK.exists() or NOTEBOOK.read_text() != text:
            print(f"{NOTEBOOK} is stale: run python launch/make_notebook.py", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
