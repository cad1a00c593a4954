"""How many bytes bitsandbytes (0.50) stores for a model's weights, layer by layer.

Rules, read from bitsandbytes' source (`_ops.py` fake kernels, `functional.quantize_4bit`/`quantize_blockwise`,
`nn.Int8Params`) and checked against real 8-bit and 4-bit loads on CPU in `tests/planner/test_quantization.py`:

- transformers replaces each `nn.Linear`/`Conv1D` except the output embeddings, the last module and tied weights
  (`ModelInventory.quantized_layers`); embeddings, norms, biases and the layers left out stay floating point.
- `Linear8bitLt` (LLM.int8): an int8 weight `(out, in)` (1 byte per value; `CB` is the same storage) and `SCB`,
  one float32 absmax scale per output row.
- `Linear4bit` (nf4/fp4): two 4-bit values packed per byte, `(n + 1) // 2` bytes for `n = out * in` values; one
  float32 absmax per block of 64 values (`ceil(n / 64)` blocks); the 16-entry float32 nf4 code table per layer.
  Double quantization stores those absmax values as uint8 (1 byte per block) plus a float32 offset and a second
  state: one float32 absmax per 256 first-level blocks and the 256-entry float32 dynamic code table, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # counting imports torch and transformers; the settings need only `Quantization`
    from stackrlhf.planner.inventory import ModelInventory

Quantization = Literal["none", "bf16", "8bit", "4bit"]

FLOAT32_BYTES = 4
BLOCKSIZE_4BIT = 64
"""bitsandbytes' default 4-bit blocksize (`Params4bit.blocksize`, transformers' `BitsAndBytesConfig`)."""
BLOCKSIZE_NESTED = 256
"""Blocksize of the second-level (double) quantization of the 4-bit absmax values."""
NF4_CODE_ENTRIES = 16
DYNAMIC_CODE_ENTRIES = 256


@dataclass(frozen=True)
class WeightBytes:
    """A model's weights in memory, bytes.

    Attributes:
        quantized: int8 weights or packed 4-bit values.
        constants: quantization constants (8-bit `SCB`; 4-bit absmax, code tables, nested state).
        unquantized: every other parameter (embeddings, norms, biases, `lm_head`, unquantized layers) and the
            buffers, at their storage dtype.
    """

    quantized: int
    constants: int
    unquantized: int

    @property
    def total(self) -> int:
        return self.quantized + self.constants + self.unquantized


def int8_layer_bytes(in_features: int, out_features: int) -> tuple[int, int]:
    """`(weight bytes, constant bytes)` of one `Linear8bitLt` weight: int8 `(out, in)` and float32 `SCB (out,)`."""
    return in_features * out_features, out_features * FLOAT32_BYTES


def nf4_layer_bytes(in_features: int, out_features: int, double_quant: bool) -> tuple[int, int]:
    """`(weight bytes, constant bytes)` of one `Linear4bit` weight (see the module docstring for the layout)."""
    n = in_features * out_features
    blocks = -(n // -BLOCKSIZE_4BIT)
    constants = NF4_CODE_ENTRIES * FLOAT32_BYTES
    if double_quant:
        nested_blocks = -(blocks // -BLOCKSIZE_NESTED)
        constants += blocks + FLOAT32_BYTES + nested_blocks * FLOAT32_BYTES + DYNAMIC_CODE_ENTRIES * FLOAT32_BYTES
    else:
        constants += blocks * FLOAT32_BYTES
    return (n + 1) // 2, constants


def weight_bytes(
    inventory: ModelInventory, quantization: Quantization, double_quant: bool, float_bytes: int
) -> WeightBytes:
    """Bytes of `inventory`'s weights stored as `quantization`, unquantized parameters at `float_bytes` each.

    Args:
        inventory: the model's layers (from `inspect_model`).
        quantization: `"none"`/`"bf16"` (every parameter at `float_bytes`), `"8bit"` or `"4bit"`.
        double_quant: 4-bit only: quantize the absmax values too.
        float_bytes: bytes per unquantized parameter (4 for float32, 2 for bf16/fp16).
    """
    quantized = constants = quantized_params = 0
    if quantization in ("8bit", "4bit"):
        for layer in inventory.linear_layers:
            if layer.name not in inventory.quantized_layers:
                continue
            if quantization == "8bit":
                layer_weight, layer_constants = int8_layer_bytes(layer.in_features, layer.out_features)
            else:
                layer_weight, layer_constants = nf4_layer_bytes(layer.in_features, layer.out_features, double_quant)
            quantized += layer_weight
            constants += layer_constants
            quantized_params += layer.in_features * layer.out_features
    unquantized = (inventory.params_total - quantized_params) * float_bytes + inventory.buffer_bytes
    return WeightBytes(quantized=quantized, constants=constants, unquantized=unquantized)
