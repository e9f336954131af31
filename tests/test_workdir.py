"""A workdir written before a field existed resumes as the run it was (workdir.py)."""

import json

from ebm_vs_score import config_base, settings, workdir


def _saved_without(config, fields):
    saved = json.loads(config.to_json_best_effort())
    for path in fields:
        section, name = path.split(".")
        saved[section].pop(name)
    return saved


def test_fields_that_do_not_act_on_an_old_run_are_no_change():
    config = config_base.get_config("digits", "energy")  # C: no base term, no L_QC
    saved = _saved_without(config, ["model.energy_base", "model.remat", "training.qc_fraction",
                                    "training.qc_every", "training.grad_accum_steps"])
    assert workdir.changes(saved, settings.from_config(config)) == {}


def test_an_old_c_resnet_run_had_no_base_term_and_an_old_qc_run_took_the_full_batch():
    config = config_base.get_config("digits", "resnet_energy")
    saved = _saved_without(config, ["model.energy_base"])
    assert workdir.changes(saved, settings.from_config(config)) == {
        "model.energy_base": ["none", "gaussian"]}
    qc = config_base.get_config("digits", "qc")
    saved = _saved_without(qc, ["training.qc_fraction", "training.qc_every"])
    assert workdir.changes(saved, settings.from_config(qc)) == {"training.qc_fraction": [1.0, 0.25]}
    config.model.energy_base = "none"  # what the refusal asks for: then it resumes
    s = settings.from_config(config)
    assert workdir.changes(_saved_without(config, ["model.energy_base"]), s) == {}


def test_a_run_saved_before_a_rename_resumes_under_the_new_name():
    """drl.step_size (b^2) became drl.b_squared; the old name is still accepted."""
    config = config_base.get_config("toy", "drl")
    config.drl.b_squared = 0.1
    saved = _saved_without(config, ["drl.b_squared", "drl.step_size"])
    saved["drl"]["step_size"] = 0.1  # as written before the rename
    assert workdir.changes(saved, settings.from_config(config)) == {}
    config.drl.b_squared = 0.2
    assert workdir.changes(saved, settings.from_config(config)) == {"drl.b_squared": [0.1, 0.2]}
    config.drl.b_squared, config.drl.step_size = 2e-4, 0.1  # the old name on the command line
    assert workdir.changes(saved, settings.from_config(config)) == {}


def test_fields_only_a_later_mode_reads_are_no_change_for_a_study():
    config = config_base.get_config("digits", "score")
    saved = _saved_without(config, [f"eval.long_run_{n}" for n in
                                    ("steps", "chains", "start", "marginal")])
    assert workdir.changes(saved, settings.from_config(config)) == {}
