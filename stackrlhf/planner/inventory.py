"""What the planner knows of a model's architecture, as plain data: layer shapes, parameter counts, the sizes of the
activation formulas. `stackrlhf.planner.counting` reads them off the real model class on the meta device;
`stackrlhf.planner.records` stores them as JSON, so that planning a known model imports no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ModelHead = Literal["causal_lm", "sequence_classification"]


@dataclass(frozen=True)
class LinearLayer:
    """One linear layer: `name` (qualified module name), weight `(out_features, in_features)`, and a bias or not."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def short_name(self) -> str:
        """The last part of the name (`q_proj`), as LoRA `target_modules` match it."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ModelDims:
    """The sizes the activation and KV-cache formulas use (all counts of elements, not bytes).

    Attributes:
        hidden: model width h. layers: transformer blocks. heads: query heads. kv_dim: width of the keys (and of
        the values) per token, `kv_heads * head_dim` (smaller than h under grouped- or multi-query attention).
        intermediate: feed-forward width I. vocab: output vocabulary V. gated_mlp: SwiGLU-style MLP
        (`down(act(gate(x)) * up(x))`, Llama, Mistral) rather than `fc2(act(fc1(x)))`. activation: the MLP's
        activation function as the config names it (`hidden_act` / `activation_function`, e.g. silu, gelu_new).
        largest_linear: elements `out * in` of the largest linear layer inside the blocks (what bitsandbytes
        dequantizes at once).
    """

    hidden: int
    layers: int
    heads: int
    kv_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    activation: str = "gelu"
    largest_linear: int = 0


@dataclass(frozen=True)
class ModelInventory:
    """What the meta-device model holds.

    Attributes:
        params_total: `sum(p.numel() for p in model.parameters())` (tied weights once).
        parameter_shapes: the shape of every parameter tensor (what a full fine-tune's optimizer holds).
        linear_layers: every `nn.Linear` / `Conv1D`, in module order.
        quantized_layers: names of the linear layers bitsandbytes replaces (transformers' own rules: not the output
            embeddings, the last module, tied weights or `_keep_in_fp32_modules`).
        buffer_bytes: bytes of the registered buffers (rotary frequencies, ...), as created (float32).
        dims: sizes for the activation formulas.
        architecture: the model class name.
    """

    params_total: int
    parameter_shapes: tuple[tuple[int, ...], ...]
    linear_layers: tuple[LinearLayer, ...]
    quantized_layers: frozenset[str]
    buffer_bytes: int
    dims: ModelDims
    architecture: str

    @property
    def linear_names(self) -> list[str]:
        """Distinct short names of the linear layers (what `lora_target_modules` may name)."""
        return sorted({layer.short_name for layer in self.linear_layers})

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict that `from_json` reads back (each linear layer as `[name, in, out, bias]`)."""
        values = asdict(self)
        values["linear_layers"] = [
            [layer.name, layer.in_features, layer.out_features, layer.bias] for layer in self.linear_layers
        ]
        values["quantized_layers"] = sorted(self.quantized_layers)
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelInventory:
        """Read what `to_json` wrote."""
        return cls(
            params_total=values["params_total"],
            parameter_shapes=tuple(tuple(shape) for shape in values["parameter_shapes"]),
            linear_layers=tuple(LinearLayer(*layer) for layer in values["linear_layers"]),
            quantized_layers=frozenset(values["quantized_layers"]),
            buffer_bytes=values["buffer_bytes"],
            dims=ModelDims(**values["dims"]),
            architecture=values["architecture"],
        )
