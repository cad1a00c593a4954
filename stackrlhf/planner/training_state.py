"""Trainable parameters and what training keeps for them: LoRA weights, gradients and optimizer states (bytes).

LoRA on a linear layer `(out, in)` adds `A (r, in)` and `B (out, r)`, kept in float32 (peft upcasts adapters,
`autocast_adapter_dtype=True`). A full fine-tune trains every parameter at its storage dtype. Gradients have their
parameter's dtype. Optimizer states per parameter tensor of `n` elements:
    - `adamw` (`torch.optim.AdamW`/`Adam`): exp_avg and exp_avg_sq in the parameter's dtype, `2n` elements;
    - `adamw_8bit` (bitsandbytes): two uint8 states plus two float32 absmax per 256-element block; tensors under
      4096 elements (`min_8bit_size`) keep two float32 states;
    - `adafactor` (transformers, `beta1=None`): a factored float32 second moment, `rows + cols` for a matrix,
      `n` for a vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Optimizer = Literal["adamw", "adamw_8bit", "adafactor"]

FLOAT32_BYTES = 4
BNB_MIN_8BIT_SIZE = 4096
BNB_STATE_BLOCKSIZE = 256

Shape = tuple[int, ...]


def lora_shapes(targeted: Sequence[tuple[int, int]], rank: int) -> list[Shape]:
    """Shapes of the LoRA matrices for targeted layers given as `(in_features, out_features)`."""
    shapes: list[Shape] = []
    for in_features, out_features in targeted:
        shapes += [(rank, in_features), (out_features, rank)]
    return shapes


def tensor_bytes(shapes: Sequence[Shape], element_bytes: int) -> int:
    """Bytes of tensors of `shapes` at `element_bytes` per element."""
    return sum(math.prod(shape) for shape in shapes) * element_bytes


def optimizer_state_bytes(shapes: Sequence[Shape], element_bytes: int, optimizer: Optimizer) -> int:
    """Bytes of `optimizer`'s states for parameters of `shapes` stored at `element_bytes` per element."""
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        if optimizer == "adamw":
            total += 2 * n * element_bytes
        elif optimizer == "adamw_8bit":
            if n < BNB_MIN_8BIT_SIZE:
                total += 2 * n * FLOAT32_BYTES
            else:
                total += 2 * n + 2 * -(n // -BNB_STATE_BLOCKSIZE) * FLOAT32_BYTES
        else:
            total += (shape[0] + math.prod(shape[1:]) if len(shape) >= 2 else n) * FLOAT32_BYTES
    return total
