"""Third-party noise the user cannot act on, filtered in one place (`--verbose` or `STACKRLHF_VERBOSE=1` shows it).

What is filtered, and why it is noise:

* bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" on CPUs with AVX512-BF16: it asks for
  the optional `kernels` package, whose kernel needs the Hub; bitsandbytes falls back to its own CPU kernel, and
  stackrlhf keeps 4-bit weights unpacked on such CPUs anyway (`stackrlhf.models.bnb_cpu`).
* torch's `torch.jit.script_method` deprecation, raised inside libraries at import time.
* transformers 5.24's "`is_gradient_checkpointing` is deprecated" FutureWarning: TRL's and peft's own code reads the
  old property (our options use the new name, `stackrlhf.recipes.runner.OPTION_ALIASES`).
* torch.distributed's deprecation of the collectives DeepSpeed calls (`all_gather_into_tensor`, ...).
* DeepSpeed's "Setting accelerator to CPU" on a machine without a GPU, printed whenever deepspeed is imported (which
  transformers does when it is installed): on a CPU it is the expected outcome.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

FILTERED_LOGS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "DeepSpeed": "Setting accelerator to CPU",
}
"""Logger name -> the start of the messages dropped from it."""

FILTERED_WARNINGS = (
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),
)
"""(category, message regex) of the warnings ignored."""


def verbose() -> bool:
    """Whether the user asked to see everything: `--verbose` on the command line or `STACKRLHF_VERBOSE=1`."""
    return os.environ.get("STACKRLHF_VERBOSE", "") not in ("", "0") or "--verbose" in sys.argv


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not str(record.msg).startswith(self.prefix)


def install() -> None:
    """Install the filters (idempotent); called when `stackrlhf` is imported, before any third-party import."""
    for name, prefix in FILTERED_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropMessages) for existing in logger.filters):
            logger.addFilter(_DropMessages(prefix))
    if not verbose():
        for category, message in FILTERED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
