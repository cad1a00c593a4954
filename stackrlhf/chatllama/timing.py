"""Wall-clock seconds per phase of a PPO step (generate / score / optimise), synchronising CUDA around each phase."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PHASES = ("generate", "score", "optimise")


class PhaseTimer:
    """Accumulates seconds per named phase; `with timer("generate"): ...` adds that block's duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds per phase of `PHASES` since the last `take`, and reset them."""
        taken = {phase: self.seconds.get(phase, 0.0) for phase in PHASES}
        self.seconds.clear()
        return taken


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
