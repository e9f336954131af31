"""Tests run on the CPU kernels ``main`` chooses (``hostcpu.use_fast_cpu_kernels``: XLA's
Eigen convolutions instead of YNNPACK's), set before any test starts JAX."""

from ebm_vs_score import hostcpu

hostcpu.use_fast_cpu_kernels()


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _records_to_a_temporary_directory(tmp_path_factory, monkeypatch):
    """Records written by tests (``ebm_vs_score.results.write_record``) go to a temporary
    directory, never to the repository's results/."""
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path_factory.mktemp("results")))


def pytest_collection_modifyitems(config, items):
    """A fault-suite case not marked ``fast`` is also ``slow``: the default run and the
    README's test command (``-m "not slow or analytic"``) keep only the fast cases, and
    ``-m faults`` runs them all."""
    for item in items:
        if item.get_closest_marker("faults") and not item.get_closest_marker("fast"):
            item.add_marker(pytest.mark.slow)
