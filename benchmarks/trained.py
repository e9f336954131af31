"""The start shared by the benchmarks that measure a trained checkpoint (``divergence``,
``ais_budget``): refuse stray arguments, select the CPU kernels ``main`` selects, cross the
config into typed settings once and restore the checkpoint as ``--mode=eval`` does."""

from __future__ import annotations

from absl import app


def restore(argv: list[str], config, workdir: str):
    """``(settings, runner.EvalContext)`` of the trained run in ``workdir``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ebm_vs_score import hostcpu

    hostcpu.use_fast_cpu_kernels()
    from ebm_vs_score import settings
    from ebm_vs_score.evaluate import runner

    s = settings.from_config(config)
    return s, runner.prepare(s, workdir)


def finish(result: dict, out: str | None) -> None:
    """Adds the load at the end to ``result['machine']`` and writes it to ``out`` (if any)."""
    import json
    import os

    result["machine"]["load_average_end"] = list(os.getloadavg())
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
