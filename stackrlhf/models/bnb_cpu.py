"""Keep bitsandbytes' 4-bit layers right on CPUs with AVX512-BF16 when a model switches between eval and train mode.

The bug (bitsandbytes 0.49.0 through 0.50.2, the newest release checked, and its main branch as of that release;
it came with the fused CPU kernel, bitsandbytes PR #1804): on a CPU with AVX512-BF16 (recent Intel Xeons, AMD EPYC
Zen 4 and later), `Linear4bit.forward` (`bitsandbytes/nn/modules.py`, 0.50.2 lines 613-620) repacks the layer's
4-bit weight for that kernel on its first eval-mode forward pass whose input needs no gradient, *in place*:
`self.weight.data, quant_state = _convert_weight_packed_for_cpu(self.weight.data, quant_state)`. That repacking
(`bitsandbytes/functional.py` `_convert_weight_packed_for_cpu`, lines 1676-1727) rewrites the parameter's bytes,
turns the shared `QuantState` into a bfloat16, transposed, never double-quantized one and sets its
`packing_format_for_cpu` flag. From then on:

* layers whose shape the kernel cannot take crash: `assert N % block_n == 0, "N must be divisible by block_n"`
  (line 1696; `N` is `out_features`, `block_n` 32) and, when `in_features` is not a multiple of the quantization
  blocksize, `absmax.reshape(N, K // blocksize)` fails. Tiny test models (and real ones with odd head counts or
  vocabulary-sized layers) have such layers;
* nothing converts the weight back when the model returns to train mode (there is no `train()` hook; only
  `_save_to_state_dict`, `Params4bit.cuda()` / `.xpu()` do). `matmul_4bit` (`bitsandbytes/autograd/_functions.py`,
  lines 419-426) sends every CPU call on a packed weight to the inference kernel `gemv_4bit`, which has no backward:
  a training forward pass fails with "a view of a leaf Variable that requires grad is being used in an in-place
  operation" (`result += bias`, line 425), and without a bias the input gradient would be dropped silently;
* the conversion back (`_convert_weight_packed_for_cpu_inverse`, lines 1730-1795) is lossy: the absmax it returns
  stays bfloat16, and for a layer without double quantization it also stays transposed, so a `state_dict()` taken
  after an eval pass saves (and leaves in the model) wrong scales; with double quantization the scales are
  re-quantized from bfloat16, drifting a little on every round trip;
* the kernel rounds differently from the generic path that training uses: it rounds the input and the scales to
  bfloat16 whatever `bnb_4bit_compute_dtype` says, and even for a bfloat16 model its results differ (by up to about
  1% of the largest logit of stackrlhf's tiny test model). PPO's rollout log-probabilities (eval mode) and its
  training ones (train mode) would then differ, and the PPO ratio would not start at 1.

On CPUs without AVX512-BF16 `Linear4bit.support_avx512bf16_for_cpu` is False and none of this happens.

The workaround (`install`, called where stackrlhf loads a 4-bit model) wraps `Linear4bit.forward` so that the
parameter and its `QuantState` are never repacked: bitsandbytes' own forward pass runs with the layer's repacking
switch (`support_avx512bf16_for_cpu`) turned off for the call, so every pass, eval or train, with or without
gradients, takes bitsandbytes' generic path and gives the same results. The fused kernel is not used at all: a
trainer's numbers must not depend on which CPU it runs on. The price is eval-mode speed (generation, rollouts) on
CPUs with AVX512-BF16 only; other CPUs and GPUs never use that kernel. A weight that bitsandbytes repacked before the
workaround was installed is converted back (with its scales' layout fixed, their values rounded to bfloat16 by then)
on its next forward pass. Saving, loading, `deepcopy`, peft's merge and LoRA adapters all see the usual layout.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

logger = logging.getLogger(__name__)

AFFECTED_VERSIONS = SpecifierSet(">=0.49.0")
"""bitsandbytes releases whose `Linear4bit` repacks in place (0.49.0 introduced it; still in 0.50.2 and main, so no
upper bound yet: add `<X` once a release `X` fixes it, and `install` also checks that the repacking hook is there)."""

PACK_BLOCK_N = 32
"""`_convert_weight_packed_for_cpu`'s `block_n`, which its inverse needs to convert a repacked weight back."""

_FORWARD_MARK = "_stackrlhf_bnb_cpu_workaround"


def is_affected(version: str | None = None) -> bool:
    """Whether bitsandbytes `version` (default: the installed one; False when it is not installed) has the bug."""
    if version is None:
        try:
            import bitsandbytes
        except ImportError:
            return False
        version = bitsandbytes.__version__
    return AFFECTED_VERSIONS.contains(Version(version), prereleases=True)


def is_installed() -> bool:
    """Whether `Linear4bit.forward` is the workaround's."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return getattr(Linear4bit.forward, _FORWARD_MARK, False)


def install() -> bool:
    """Apply the workaround to bitsandbytes' `Linear4bit` (every instance, present and future), if its version has
    the bug. Idempotent; cheap after the first call.

    Returns:
        Whether the workaround is in place.
    """
    if is_installed():
        return True
    if not is_affected():
        return False
    import bitsandbytes.nn.modules as bnb_modules

    if not hasattr(bnb_modules, "_convert_weight_packed_for_cpu"):
        # An affected version number but no in-place repacking in `Linear4bit`: nothing to work around.
        return False
    original = bnb_modules.Linear4bit.forward

    @functools.wraps(original)
    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x, original)

    setattr(forward, _FORWARD_MARK, True)
    forward._stackrlhf_original = original  # type: ignore[attr-defined]
    bnb_modules.Linear4bit.forward = forward
    logger.debug("bitsandbytes %s: Linear4bit's in-place CPU repacking worked around", _bnb_version())
    return True


def uninstall() -> None:
    """Restore bitsandbytes' own `Linear4bit.forward` (for tests that show the bug)."""
    if not is_installed():
        return
    from bitsandbytes.nn import Linear4bit

    Linear4bit.forward = Linear4bit.forward._stackrlhf_original


def _forward(self: torch.nn.Module, x: torch.Tensor, original: Callable[..., torch.Tensor]) -> torch.Tensor:
    """`Linear4bit.forward` without the in-place repacking (see the module docstring)."""
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(self)
    if getattr(self.weight.quant_state, "packing_format_for_cpu", False):
        _restore_generic_layout(self)
    allowed = self.__dict__.get("support_avx512bf16_for_cpu", False)
    self.support_avx512bf16_for_cpu = False
    try:
        return original(self, x)
    finally:
        self.support_avx512bf16_for_cpu = allowed


def _restore_generic_layout(self: torch.nn.Module) -> None:
    """Convert back a weight that bitsandbytes repacked in place before `install`, fixing the scales that its own
    inverse leaves transposed (a layer without double quantization)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    state = self.weight.quant_state
    nested = state.original_nested
    absmax = state.absmax
    data, state = _convert_weight_packed_for_cpu_inverse(self.weight.data, state, block_n=PACK_BLOCK_N)
    if not nested:
        state.absmax = absmax.T.reshape(-1).float().contiguous()
    self.weight.data, self.weight.quant_state = data, state
    if getattr(self, "quant_state", None) is not None:
        self.quant_state = state
    logger.warning(
        "A bitsandbytes Linear4bit weight repacked for the CPU kernel before stackrlhf's workaround was installed was "
        "converted back; its scales were rounded to bfloat16. Load 4-bit models through stackrlhf to avoid this."
    )


def _bnb_version() -> str:
    """The installed bitsandbytes version."""
    import bitsandbytes

    return bitsandbytes.__version__
