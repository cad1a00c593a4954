"""The machine a benchmark ran on, as its reports name it: CPU model, cores and whether it has AVX512-BF16 (which
changes bitsandbytes' CPU path)."""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` says."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def has_avx512_bf16() -> bool:
    """Whether the CPU advertises AVX512-BF16."""
    return "avx512_bf16" in next((line for line in _cpuinfo() if line.startswith("flags")), "")
