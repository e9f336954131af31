"""The foundation's guarantees: resumable, preemptible, sharding-invariant, clear failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from ebm_vs_score import checkpoints, config_base, errors, settings, train
from ebm_vs_score import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--config.model.hidden=(32,32)",
    "--config.training.batch_size=64",
    "--config.training.log_every=5",
    "--config.training.sample_every=100000",
    "--config.sampling.num_steps=10",
    "--config.sampling.num_samples=16",
]


def _main_cmd(workdir, *extra, config="configs/toy_score.py"):
    return [sys.executable, "-m", "ebm_vs_score.main", f"--config={config}",
            f"--workdir={workdir}", *FAST, *extra]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                TF_CPP_MIN_LOG_LEVEL="3")


def _run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600, **kw)


def _final_params(workdir, config):
    s = settings.from_config(config)
    model = train.builders.build_model(s)
    tx = train.make_optimizer(s.optim)
    template = train.init_state(model, tx, s.seed)
    ckpt = checkpoints.Checkpointer(workdir)
    state = ckpt.restore(template)
    ckpt.close()
    return state


def _toy_config(n_iters):
    config = config_base.get_config("toy", "score")
    config.model.hidden = (32, 32)
    config.training.batch_size = 64
    config.training.n_iters = n_iters
    return config


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.2)


def _steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


@pytest.mark.slow  # 41 s; Ctrl-C and SIGTERM resumes (test_faults) stay in the default run
def test_sigkill_resume_is_bit_identical(tmp_path):
    n = 60
    args = [f"--config.training.n_iters={n}", "--config.training.checkpoint_every=10"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert _run(_main_cmd(straight, *args)).returncode == 0
    kill_after = int(np.random.default_rng().integers(10, 40))
    proc = subprocess.Popen(_main_cmd(killed, *args), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: any(s >= kill_after for s in _steps(killed)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_steps(killed)) < n, "killed too late to test anything"
    resumed = _run(_main_cmd(killed, *args))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint" in resumed.stderr
    a, b = _final_params(straight, _toy_config(n)), _final_params(killed, _toy_config(n))
    assert int(a.step) == int(b.step) == n
    for x, y in zip(jax.tree.leaves((a.params, a.ema_params, a.opt_state)),
                    jax.tree.leaves((b.params, b.ema_params, b.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # 30 s; test_faults' SIGTERM cases (preempted, resumed) run by default
def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    args = ["--config.training.n_iters=1000000", "--config.training.checkpoint_every=100000"]
    proc = subprocess.Popen(_main_cmd(workdir, *args), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == errors.PREEMPTED_EXIT_STATUS == 75, err[-2000:]
    assert "Traceback" not in err and "finished at step" not in err
    (saved,) = _steps(workdir)
    assert f"preempted at step {saved}" in err
    assert saved >= 5
    resumed = _run(_main_cmd(workdir, f"--config.training.n_iters={saved + 3}", *args[1:]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from checkpoint at step {saved}" in resumed.stderr
    assert _steps(workdir)[-1] == saved + 3


EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from ebm_vs_score import builders, config_base, settings, train
    assert jax.device_count() == 8
    config = config_base.get_config("toy", "score")
    config.model.hidden = (32, 32)
    s = settings.from_config(config)
    model = builders.build_model(s)
    tx = train.make_optimizer(s.optim)
    loss_fn = builders.build_loss_fn(s, model)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(64, 2)).astype(np.float32)} for _ in range(3)]
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train.make_mesh(devices)
        state = train.replicate(train.init_state(model, tx, 0), mesh)
        step = train.compile_train_step(loss_fn, tx, 0.99, mesh, state)
        losses = []
        for b in batches:
            batch = train.global_batch(b, mesh)
            assert len(batch["x"].sharding.device_set) == len(devices)
            assert batch["x"].addressable_shards[0].data.shape[0] == 64 // len(devices)
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        results.append((losses, jax.device_get(state.params)))
    (l1, p1), (l8, p8) = results
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK")
""")


def test_eight_cpu_devices_match_one_device():
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_bad_config_value_is_one_clear_sentence(tmp_path):
    out = _run(_main_cmd(str(tmp_path / "w"), "--config.sde.name=vesde"))
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sde.name='vesde' is not valid; choose one of")
    assert "'ve'" in last and "'vp'" in last


@pytest.mark.parametrize("field, value, words", [
    ("training.batch_size", 0, "must be positive"),
    ("model.parameterization", "energy", "model.parameterization='energy' is not valid"),
    ("data.dataset", "cifar11", "data.dataset='cifar11' is not valid"),
    ("sampling.method", "mala", "score-only"),
    ("training.sample_every", -1, "training.sample_every=-1 must be an integer >= 0"),
])
def test_validation_errors(field, value, words):
    config = config_base.get_config("toy", "score")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(errors.ConfigError, match=words.replace("(", r"\(")):
        settings.validate(config)


def test_inconsistent_unet_shape_is_refused():
    config = config_base.get_config("digits", "energy")
    config.model.ch_mult = (1, 2, 2, 2, 2)
    with pytest.raises(errors.ConfigError, match="not divisible"):
        settings.validate(config)


def test_missing_dataset_is_one_clear_sentence(tmp_path):
    out = _run(_main_cmd(str(tmp_path / "w"), config="configs/cifar_score.py") +
               [f"--config.data.data_dir={tmp_path / 'empty'}"])
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cifar10" in last and "data_dir" in last


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = _toy_config(40)
    config.training.checkpoint_every = 10
    config.training.log_every = 5
    config.sampling.num_steps = 5
    real = train.data_lib.get_dataset

    def poisoned(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            yield {"x": batch["x"] * (np.nan if i >= 13 else 1.0)}

    monkeypatch.setattr(train.data_lib, "get_dataset", poisoned)
    with pytest.raises(errors.NonFiniteLossError,
                       match=r"non-finite at step 14.*last checkpoint \(step 10\) is kept; add "
                       r"--config.optim.lr=0.0001 .* resume from step 10"):
        train.train_and_evaluate(settings.from_config(config), workdir)
    assert _steps(workdir) == [10]
    state = _final_params(workdir, config)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    # The advice works: the same call with the lower learning rate resumes from step 10.
    monkeypatch.setattr(train.data_lib, "get_dataset", real)
    config.optim.lr = 1e-4
    state = train.train_and_evaluate(settings.from_config(config), workdir)
    assert int(state.step) == 40 and _steps(workdir)[-1] == 40
    (change,) = [json.loads(line) for line in open(os.path.join(workdir, "config_changes.jsonl"))]
    assert change["step"] == 10 and change["changes"] == {"optim.lr": [1e-3, 1e-4]}
    assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["lr"] == 1e-4


@pytest.mark.parametrize("sample_every, grids", [(0, []), (7, [7, 14, 16])])
def test_sample_grids_at_their_cadence_and_the_last_step_or_none(tmp_path, sample_every, grids):
    config = _toy_config(16)
    config.training.sample_every, config.training.log_every = sample_every, 4
    config.sampling.num_steps, config.sampling.num_samples = 3, 8
    train.train_and_evaluate(settings.from_config(config), str(tmp_path))
    grid_dir = tmp_path / "samples"
    written = sorted(int(n[5:13]) for n in os.listdir(grid_dir)) if grid_dir.exists() else []
    assert written == grids
    assert os.path.exists(tmp_path / "samples.png") == bool(grids)
    assert _steps(str(tmp_path))[-1] == 16


def test_divergence_before_the_first_checkpoint_says_nothing_was_saved(tmp_path):
    config = _toy_config(40)
    config.optim.lr, config.optim.warmup, config.optim.grad_clip = 1e6, 0, 0.0
    config.training.log_every, config.training.checkpoint_every = 1, 20
    with pytest.raises(errors.NonFiniteLossError) as error:
        train.train_and_evaluate(settings.from_config(config), str(tmp_path))
    message = str(error.value)
    assert "before its first checkpoint" in message and "is kept" not in message
    assert "optim.lr=1e+06 is far above" in message and _steps(str(tmp_path)) == []
    assert "--config.optim.lr=0.001" in message  # a value that trains, not lr / 10
    assert not os.path.exists(os.path.join(tmp_path, "config.json"))  # nothing refuses it


def test_resuming_with_a_different_config_is_refused(tmp_path):
    config = _toy_config(2)
    workdir_lib.save(settings.from_config(config), str(tmp_path))
    other = _toy_config(2)
    other.model.hidden = (64, 64)
    with pytest.raises(errors.WorkdirError,
                       match="different config.*model.hidden.*--allow_config_change"):
        workdir_lib.check_workdir(settings.from_config(other), str(tmp_path), training=True)
    with pytest.raises(errors.WorkdirError, match="different config.*model.hidden") as refused:
        # eval / sample: no training flag
        workdir_lib.check_workdir(settings.from_config(other), str(tmp_path))
    assert "--allow_config_change" not in str(refused.value)
    workdir_lib.check_workdir(settings.from_config(other), str(tmp_path), allow_changes=True)
    safe = _toy_config(10)  # the fields the program's own advice names
    safe.optim.lr, safe.optim.warmup, safe.data.data_dir = 1e-5, 500, "/elsewhere"
    safe.sampling.num_steps = 7
    workdir_lib.check_workdir(settings.from_config(safe), str(tmp_path))


def test_accepted_changes_are_recorded_and_config_json_is_current(tmp_path):
    workdir = str(tmp_path)
    workdir_lib.commit(settings.from_config(_toy_config(2)), workdir, 0)
    assert not os.path.exists(os.path.join(workdir, "config_changes.jsonl"))
    # the same config: nothing to record
    workdir_lib.commit(settings.from_config(_toy_config(2)), workdir, 2)
    assert not os.path.exists(os.path.join(workdir, "config_changes.jsonl"))
    changed = _toy_config(9)
    changed.optim.lr = 3e-4
    workdir_lib.commit(settings.from_config(changed), workdir, 2)
    (record,) = [json.loads(line) for line in open(os.path.join(workdir, "config_changes.jsonl"))]
    assert record["step"] == 2 and "time" in record
    assert record["changes"] == {"optim.lr": [1e-3, 3e-4], "training.n_iters": [2, 9]}
    assert workdir_lib.load_saved(workdir)["optim"]["lr"] == 3e-4


def test_prefetch_to_device_keeps_order_and_runs_ahead():
    mesh = train.make_mesh()
    pulled = []

    def batches():
        for i in range(5):
            pulled.append(i)
            yield {"x": np.full((len(jax.devices()), 2), i, np.float32)}

    it = train.prefetch_to_device(batches(), mesh, size=2)
    first = next(it)
    assert pulled == [0, 1]  # one batch already on its way while batch 0 is used
    assert isinstance(first["x"], jax.Array) and float(first["x"][0, 0]) == 0.0
    rest = [float(b["x"][0, 0]) for b in it]
    assert rest == [1.0, 2.0, 3.0, 4.0]


def test_attention_sizes_are_checked_only_for_the_unet():
    resnet = config_base.get_config("digits", "resnet_energy")
    resnet.model.attn_resolutions = (3,)  # unused by the ResNet energy
    settings.validate(resnet, num_devices=1)
    unet = config_base.get_config("digits", "score")
    unet.model.attn_resolutions = (3,)
    with pytest.raises(errors.ConfigError, match="attn_resolutions"):
        settings.validate(unet, num_devices=1)
