"""The host CPU as records name it: its model name, and its family, model and vector units
(``cpu_id``), since VMs often report only "AMD EPYC" or "Intel(R) Xeon(R) Processor".
No JAX here: ``ebm_vs_score.results`` and the benchmarks read it before or without a backend."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "sve", "asimd")


def cpu_id_from(cpuinfo: str) -> str | None:
    """'vendor family F model M stepping S; ISA flags' of the first CPU in a
    ``/proc/cpuinfo`` text: VMs often name the CPU only "AMD EPYC" or "Intel(R) Xeon(R)
    Processor", which tells neither the generation nor the vector units timings depend on."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    keys = ("cpu family", "model", "stepping", "CPU implementer", "CPU part")
    ident = " ".join([fields.get("vendor_id", "")] + [f"{k} {fields[k]}" for k in keys
                                                     if k in fields]).strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    isa = " ".join(f for f in _ISA_FLAGS if f in flags)
    return "; ".join(part for part in (ident, isa) if part) or None


def cpu_id() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_id_from(f.read())
    except OSError:
        return None
