"""Base configuration: every field with its default, and the per-scale dataset defaults.

The experiment files in ``configs/`` call :func:`get_config` with a data scale
('toy', 'digits', 'cifar') and a family ('score', 'energy', 'resnet_energy', 'qc', 'drl')
and override what they need. Every field can be overridden on the command line, e.g.
``--config.training.batch_size=64``. :func:`ebm_vs_score.settings.validate` checks the
result once at start-up.

Families (DESIGN.md): ``score`` = U, ``energy`` = C (energy U-Net), ``resnet_energy`` =
C-ResNet, ``qc`` = U trained with the quasi-conservative regularizer (Chao et al. 2023),
``drl`` = an energy trained by diffusion recovery likelihood (Gao et al. 2021). The
time-invariant families (no time input; sampled by descent or Langevin, ``sde.*`` unused):
``eqm`` = Equilibrium Matching's implicit field (Wang & Du 2025), ``eqm_energy`` = its
explicit energy EqM-E (``model.energy_form``), ``energy_matching`` = one scalar potential
trained by flow matching then contrastive divergence (Balcerak et al. 2025).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ebm_vs_score.compose.operators import OPERATORS

SCALES = ("toy", "digits", "cifar")
FAMILIES = ("score", "energy", "resnet_energy", "qc", "drl", "eqm", "eqm_energy",
            "energy_matching")


def _data(scale: str) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.dataset = {"toy": "8gaussians", "digits": "digits", "cifar": "cifar10"}[scale]
    data.image_size = {"toy": 0, "digits": 8, "cifar": 32}[scale]
    data.num_channels = {"toy": 0, "digits": 1, "cifar": 3}[scale]
    data.data_dir = ml_collections.config_dict.placeholder(str)
    data.random_flip = scale == "cifar"
    data.dequantize = False
    data.toy_dim = 2
    data.num_components = 8
    # TFDS only: 'auto' reads an indexable raw-pixel file (built once), 'index' requires it,
    # 'tf_data' streams with tf.data (ebm_vs_score/data/tfds.py).
    data.input_pipeline = "auto"
    data.cache_dir = ml_collections.config_dict.placeholder(str)  # None: DATA_DIR/...
    data.input_workers = 4  # threads preparing the next batches (indexable datasets)
    return data


def _model(scale: str) -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.name = "mlp" if scale == "toy" else "unet"
    model.parameterization = "unconstrained"
    model.sigma_data = 1.0 if scale == "toy" else 0.5
    model.hidden = (128, 128, 128)
    model.ch = {"toy": 0, "digits": 16, "cifar": 128}[scale]
    model.ch_mult = {"toy": (1,), "digits": (1, 2), "cifar": (1, 2, 2, 2)}[scale]
    model.num_res_blocks = {"toy": 0, "digits": 1, "cifar": 2}[scale]
    model.attn_resolutions = {"toy": (), "digits": (4,), "cifar": (16,)}[scale]
    model.dropout = {"toy": 0.0, "digits": 0.0, "cifar": 0.1}[scale]
    model.num_groups = {"toy": 1, "digits": 8, "cifar": 32}[scale]
    model.embedding = "sinusoidal"
    model.embedding_scale = 250.0
    model.dtype = "float32"
    # C-ResNet energy E = B + N(c_in x)/(sigma c_in): 'gaussian' adds B = c_in^2 ||x||^2 / 2,
    # a restoring force (DESIGN.md rule 2); 'none' is Salimans & Ho's model C as published.
    model.energy_base = "gaussian"
    # Scalar head of the C-ResNet (models/resnet.py ENERGY_HEADS): 'mean' (Salimans & Ho) or
    # 'sum' (Gao et al.'s DRL network; with model.num_groups=0 it has no normalization).
    model.energy_head = "mean"
    # Energy of the time-invariant families (eqm.ENERGY_FORMS): 'dot' E = -<F(x), x> and
    # 'l2' E = ||F(x)||^2 / 2 on a vector network, 'scalar' E = c_max ||x||^2 / 2 + N(x) on
    # a scalar one (Wang & Du 2025's EqM-E forms; eqm.py).
    model.energy_form = "dot"
    # Rematerialize (jax.checkpoint) the ResNet and attention blocks: less activation
    # memory for more compute; values unchanged (unet / resnet_energy; ignored by the mlp).
    model.remat = False
    return model


def _sde(scale: str) -> ml_collections.ConfigDict:
    sde = ml_collections.ConfigDict()
    sde.name = "vp"
    sde.sigma_min = 0.01
    sde.sigma_max = {"toy": 10.0, "digits": 20.0, "cifar": 50.0}[scale]
    sde.beta_min = 0.1
    sde.beta_max = 20.0
    sde.num_scales = 1000
    sde.eps = 1e-3
    return sde


def _training(scale: str) -> ml_collections.ConfigDict:
    training = ml_collections.ConfigDict()
    training.n_iters = {"toy": 4000, "digits": 2000, "cifar": 800_000}[scale]
    training.batch_size = {"toy": 512, "digits": 64, "cifar": 128}[scale]
    training.log_every = {"toy": 200, "digits": 250, "cifar": 100}[scale]
    training.checkpoint_every = {"toy": 1000, "digits": 1000, "cifar": 10_000}[scale]
    # A sample grid every this many steps and at the last; 0: none while training.
    training.sample_every = {"toy": 2000, "digits": 2000, "cifar": 50_000}[scale]
    training.keep_checkpoints = 3
    training.ema_decay = {"toy": 0.999, "digits": 0.999, "cifar": 0.9999}[scale]
    training.objective = "dsm"
    training.dsm_variant = "continuous"
    training.likelihood_weighting = False
    training.reduce_mean = True
    training.qc_weight = 0.0
    training.qc_probes = 1
    # Amortized L_QC (same expectation): on this share of each batch, and on one step in
    # qc_every on average, weighted x qc_every there (losses.amortized_qc). A quarter of the
    # batch keeps the digits QC step under 2x U (BENCHMARKS.md); qc_every > 1 runs the term
    # under lax.cond, whose convolutions XLA:CPU runs ~12x slower (1.8 s vs 0.14 s a step).
    training.qc_fraction = 0.25
    training.qc_every = 1
    training.ism_max_dim = 64  # exact ISM costs D jvps: refused above this dimension
    training.ssm_projection = "rademacher"
    training.ssm_num_projections = 1
    # Micro-batches per step (gradient accumulation inside the compiled step, train.py);
    # batch_size must be divisible by grad_accum_steps x the number of devices.
    training.grad_accum_steps = 1
    return training


def _optim(scale: str) -> ml_collections.ConfigDict:
    optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = {"toy": 1e-3, "digits": 1e-3, "cifar": 2e-4}[scale]
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = {"toy": 100, "digits": 200, "cifar": 5000}[scale]
    optim.grad_clip = 1.0
    return optim


def _sampling(scale: str) -> ml_collections.ConfigDict:
    sampling = ml_collections.ConfigDict()
    sampling.method = "euler_maruyama"
    sampling.num_steps = {"toy": 500, "digits": 250, "cifar": 1000}[scale]
    sampling.num_samples = {"toy": 2048, "digits": 64, "cifar": 64}[scale]
    sampling.denoise = True
    sampling.snr = 0.16
    sampling.n_steps_each = 1
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.step_size = 2e-5  # Langevin step at the smallest noise level (NCSN epsilon)
    # None: each MCMC method's own default (MALA 0.574, HMC 0.65).
    sampling.target_acceptance = ml_collections.config_dict.placeholder(float)
    sampling.num_leapfrog = 5
    # None: each MCMC method's own default (adapt for mala/hmc; not for ula/uhmc, which have
    # no Metropolis test to make an adapted step exact).
    sampling.adapt = ml_collections.config_dict.placeholder(bool)
    sampling.ode_solver = "heun"
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.use_ema = True
    # Time-invariant samplers (samplers/descent.py; EqM and Energy Matching): Nesterov's
    # momentum and form, the adaptive stop ||f|| < tol (0: a fixed number of steps), and the
    # Langevin temperature eps(t): 0 before time_cutoff, up to eps_max at t = 1.
    sampling.mu = 0.3
    sampling.nag_form = "nesterov"
    sampling.tol = 0.0
    sampling.eps_max = 0.01
    sampling.time_cutoff = 0.8
    sampling.t_start = 0.0
    return sampling


def _eval(scale: str) -> ml_collections.ConfigDict:
    ev = ml_collections.ConfigDict()
    ev.num_examples = {"toy": 2048, "digits": 297, "cifar": 10_000}[scale]
    ev.batch_size = {"toy": 512, "digits": 297, "cifar": 500}[scale]
    ev.asym_probes = {"toy": 0, "digits": 4, "cifar": 1}[scale]
    ev.asym_levels = 10
    # 0: exact divergence (D JVPs per ODE evaluation); K: Hutchinson with K probes, whose
    # probe noise the eval JSON states (nll_probe_std, nll_probe_se). digits: 4 probes, far
    # cheaper than the exact divergence at a small cost in standard error: on the 2000-step
    # digits C model 38 s against 440 s, probe SE below the examples' SE, unbiased within
    # its paired SE (`python -m benchmarks.divergence`; results/divergence_digits_C.json).
    ev.nll_probes = {"toy": 0, "digits": 4, "cifar": 1}[scale]
    ev.ais = True
    ev.checkpoint = -1
    # Local file of the FID Inception weights (ebm_vs_score/metrics/inception.py says where
    # to get them); None: FID/IS with the standard network are skipped.
    ev.inception_weights = ml_collections.config_dict.placeholder(str)
    # Inception statistics of the reference set (`--mode=fid_stats` writes them: all train
    # images, uint8 levels, no dequantization); None: FID against the eval test images.
    ev.fid_stats = ml_collections.config_dict.placeholder(str)
    ev.fid_batch_size = 200  # Inception batch (global, sharded over the devices)
    # --mode=drl_long_run (ebm_vs_score/drl/long_run.py; Gao et al. 2021, Sec. 6): level-0
    # chains of a DRL model started from the x_1 of its progressive samples ('sample') or of
    # real points ('data'); 'marginal' adds the chain of exp(-E(y, 0)).
    ev.long_run_steps = {"toy": 100_000, "digits": 10_000, "cifar": 10_000}[scale]
    ev.long_run_chains = {"toy": 2000, "digits": 64, "cifar": 64}[scale]
    ev.long_run_start = "data" if scale == "toy" else "sample"
    ev.long_run_marginal = scale == "toy"
    # OOD AUROC of the energy / field norm: test images against noise, inverted images and
    # (digits) grey patches (evaluate/ood.py); images only.
    ev.ood = True
    # Time-invariant models: sample quality against NFE for gd / nag / nag (EqM form) at
    # these step counts, and nag with these adaptive tols (evaluate/time_invariant.py).
    ev.nfe_sweep_steps = ()
    ev.nfe_sweep_tols = ()
    return ev


def _drl() -> ml_collections.ConfigDict:
    drl = ml_collections.ConfigDict()
    drl.num_levels = 6
    drl.num_steps = 30
    # b^2 of the Langevin step s_t^2 = b^2 c_t sigma_{t+1}^2 (the authors' b_square).
    drl.b_squared = 2e-4
    drl.step_size = ml_collections.config_dict.placeholder(float)  # old name of b_squared
    drl.metropolis = False
    # Langevin step factor per level: 'authors' (Gao et al.'s code) or 'sigma' (their Sec. 4).
    drl.step_schedule = "authors"
    # Factor of the C-ResNet output: 'sigma' (1 / (sigma c_in), log-density units) or 'step'
    # (1 / s_t^2, the authors' code: the chain's drift is grad N / 2 whatever b^2 is).
    drl.energy_scale = "sigma"
    return drl


def compose_section() -> ml_collections.ConfigDict:
    """The ``compose`` section of ``configs/toy_compose.py`` (``--mode=compose``,
    ebm_vs_score/compose/run.py), with its defaults."""
    c = ml_collections.ConfigDict()
    c.datasets = ("8gaussians", "gmm")
    c.families = ("score", "energy", "qc")
    c.operators = OPERATORS
    c.samplers = ("euler_maruyama", "ode", "ula", "mala", "hmc")
    c.product_weights = (1.0, 1.0)
    c.mixture_weights = (0.5, 0.5)
    c.alpha = 0.3  # negation p_1 / p_2^alpha
    c.num_samples = 1000
    c.sde_steps = 200  # euler_maruyama, ancestral, pc
    c.ode_steps = 50  # ode (Heun): 2 NFE per step
    c.mcmc_levels = 50  # ald, ula, mala, hmc: noise levels
    c.n_steps_each = 4
    c.grid_size = 300
    c.grid_lim = 3.5
    return c


# Old field names still accepted (old path -> new path): a config that sets the old one (a
# config file, a --config flag, a saved config.json) means the new one.
RENAMED_FIELDS = {
    "drl.step_size": "drl.b_squared",  # it holds b^2, the squared step factor
    "study.qc_weight": "study.qc_lambda",  # lambda of L_QC in the study's QC runs
    "study.qc_weights": "study.qc_lambda_sweep",  # a lambda sweep: one QC run per value
}
# Why each old name misled, for its one-line deprecation warning.
RENAME_REASONS = {
    "drl.step_size": "it is b^2, the squared step factor",
    "study.qc_weight": "it is the lambda of the QC runs, easily confused with qc_weights",
    "study.qc_weights": "it is a lambda sweep, easily confused with qc_weight",
}


def with_current_names(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat ``{path: value}`` config with each old name's value, if set, under its new
    name (and the old name dropped)."""
    out = dict(flat)
    for old, new in RENAMED_FIELDS.items():
        value = out.pop(old, None)
        if value is not None:
            out[new] = value
    return out


def _eqm() -> ml_collections.ConfigDict:
    eqm = ml_collections.ConfigDict()
    eqm.c_max = 4.0  # c(gamma) = c_max min(1, (1 - gamma) / (1 - interp)) (the EqM code)
    eqm.interp = 0.8
    return eqm


def _energy_matching(scale: str) -> ml_collections.ConfigDict:
    """Balcerak et al. 2025 (their code's flags); the toy values follow their 2-D notebook,
    digits is cut to what a CPU affords (20 chain steps of dt 0.05 instead of 200 of 0.01)."""
    em = ml_collections.ConfigDict()
    em.time_cutoff = 0.8
    em.lambda_cd = {"toy": 0.5, "digits": 1e-3, "cifar": 1e-3}[scale]
    em.num_gibbs = {"toy": 50, "digits": 20, "cifar": 200}[scale]
    em.dt = {"toy": 0.02, "digits": 0.05, "cifar": 0.01}[scale]
    em.eps_max = {"toy": 0.15, "digits": 0.01, "cifar": 0.01}[scale]
    em.phase1_steps = {"toy": 3000, "digits": 1500, "cifar": 145_000}[scale]
    em.cd_trim_fraction = 0.1
    em.cd_neg_clamp = {"toy": 0.0, "digits": 0.02, "cifar": 0.02}[scale]
    em.split_negatives = True
    return em


# Samplers of the time-invariant families: EqM's Nesterov descent (eta, mu = 0.3) and
# Energy Matching's Langevin (dt, eps schedule; T = num_steps * dt, 3.25 on CIFAR-10).
_TI_SAMPLING = {
    "eqm": {"toy": dict(method="nag", num_steps=200, step_size=0.02),
            "digits": dict(method="nag", num_steps=100, step_size=0.005),
            "cifar": dict(method="nag", num_steps=250, step_size=0.0017)},
    "energy_matching": {"toy": dict(method="langevin", num_steps=300, step_size=0.01),
                        "digits": dict(method="langevin", num_steps=200, step_size=0.01),
                        "cifar": dict(method="langevin", num_steps=325, step_size=0.01)},
}
_TI_SAMPLING["eqm_energy"] = _TI_SAMPLING["eqm"]

_FAMILY_OVERRIDES = {
    "score": {},
    "energy": {"model.parameterization": "conservative"},
    "resnet_energy": {"model.parameterization": "resnet_energy", "model.name": "resnet_energy"},
    # lambda = 0.1, the digits study's QC weight: VP from scratch, where Chao et al.'s 1e-4
    # (fine-tuning a VE model, whose L_QC is weighted by std^2) leaves NAsym unchanged.
    "qc": {"training.qc_weight": 0.1},
    "drl": {"model.parameterization": "resnet_energy", "model.name": "resnet_energy",
            "training.objective": "drl"},
    "eqm": {"training.objective": "eqm"},
    "eqm_energy": {"training.objective": "eqm", "model.parameterization": "conservative"},
    "energy_matching": {"training.objective": "energy_matching",
                        "model.parameterization": "conservative"},
}


def get_config(scale: str, family: str) -> ml_collections.ConfigDict:
    """The full default config for a data ``scale`` and model ``family``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {SCALES}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {FAMILIES}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.family = family
    config.data = _data(scale)
    config.model = _model(scale)
    config.sde = _sde(scale)
    config.training = _training(scale)
    config.optim = _optim(scale)
    config.sampling = _sampling(scale)
    config.eval = _eval(scale)
    config.drl = _drl()
    config.eqm = _eqm()
    config.energy_matching = _energy_matching(scale)
    if scale == "toy" and family in ("energy", "resnet_energy", "drl"):
        config.model.name = "mlp"
    if family in _TI_SAMPLING:
        config.sampling.update(_TI_SAMPLING[family][scale])
        if scale == "toy":
            config.sampling.eps_max = config.energy_matching.eps_max
    for path, value in _FAMILY_OVERRIDES[family].items():
        if scale == "toy" and path == "model.name":
            continue
        section, field = path.split(".")
        config[section][field] = value
    return config
