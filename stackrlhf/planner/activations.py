"""Transient memory of one step: activations kept for the backward pass, logits buffers, and the KV cache.

Units: bytes. Shapes use b (sequences in one forward pass), L (tokens per sequence), so `tokens = b * L`;
h hidden width, I feed-forward width, `kv_dim` key (= value) width per token, V vocabulary, n layers, and
`act_bytes` the bytes of one activation element (4 when the hidden states are float32, 2 in bf16).
"""

from __future__ import annotations

from stackrlhf.planner.counting import ModelDims

FLOAT32_BYTES = 4


def block_activation_elements(dims: ModelDims, lora_elements: int = 0) -> int:
    """Elements autograd keeps, per token, for one transformer block's backward pass.

    Derivation (pre-norm block, scaled-dot-product attention that keeps no `(heads, L, L)` score matrix):
        - the two norms keep their inputs: `2h`;
        - attention keeps the normalised input of the q/k/v projections (`h`), q, k and v for the attention
          backward (`h + 2 kv_dim`) and the attention output that enters the output projection (`h`);
        - the MLP keeps its normalised input (`h`) and, for `fc2(act(fc1 x))`, the activation's input and output
          (`2I`); for the gated `down(act(gate x) * up x)`, gate and up outputs, `act(gate x)` and the product
          (`4I`);
        - `lora_elements`: what LoRA adds per block (`lora_elements_per_block`).
    Residual additions keep nothing; per-token norm statistics and dropout masks are ignored (a few elements).
    """
    h, i = dims.hidden, dims.intermediate
    attention = h + (h + 2 * dims.kv_dim) + h
    mlp = h + (4 * i if dims.gated_mlp else 2 * i)
    return 2 * h + attention + mlp + lora_elements


def lora_elements_per_block(targeted_in_features: list[int], rank: int, layers: int) -> int:
    """Per token and block, what LoRA keeps: each targeted layer's dropped-out input copy (`in_features`, with
    LoRA dropout > 0 as in StackLLaMA) and its rank-r `A x` output (`r`), summed over the model's targeted
    layers (`targeted_in_features`) and divided by the number of blocks."""
    return sum(in_features + rank for in_features in targeted_in_features) // max(layers, 1)


def training_activation_bytes(
    dims: ModelDims, tokens: int, act_bytes: int, gradient_checkpointing: bool, lora_elements: int = 0
) -> int:
    """Activations kept for the backward pass of `tokens` tokens.

    Without checkpointing every block keeps `block_activation_elements` per token. With checkpointing each block
    keeps only its input (`h` per token) and one block's activations are recomputed at a time during the backward
    pass. Outside the blocks: the embedding output, the final norm's input and the `lm_head` input (`3h`).
    """
    per_block = block_activation_elements(dims, lora_elements) * tokens * act_bytes
    outside = 3 * dims.hidden * tokens * act_bytes
    if gradient_checkpointing:
        return dims.layers * dims.hidden * tokens * act_bytes + per_block + outside
    return dims.layers * per_block + outside


def training_logits_bytes(stage: str, dims: ModelDims, tokens: int, act_bytes: int) -> int:
    """Buffers of shape `(tokens, V)` alive at once around the loss and its backward pass.

    The model's logits in the activation dtype (only when it is not float32: they are then upcast, a second copy)
    and float32 copies:
        - ppo: the value-head model's float32 logits, their log-softmax (kept for backward), then either the
          entropy statistic's softmax and `softmax * logits` (during the loss) or the gradients of log-softmax and
          logits (during backward): 4 float32 copies;
        - sft: float32 logits, cross-entropy's log-softmax, then its gradient and the logits' gradient: 3 copies;
        - reward: a sequence-classification model has a `(tokens, 1)` score head and no vocabulary logits: 0.
    """
    if stage == "reward":
        return 0
    copies = 4 if stage == "ppo" else 3
    model_dtype_copy = act_bytes if act_bytes != FLOAT32_BYTES else 0
    return tokens * dims.vocab * (model_dtype_copy + copies * FLOAT32_BYTES)


def rollout_logits_bytes(dims: ModelDims, tokens: int, act_bytes: int) -> int:
    """PPO's no-grad forward passes (log π_old, log π_ref, values) over one chunk of `tokens` tokens: the logits,
    their float32 copy (when the model is not float32) and their float32 log-softmax, each `(tokens, V)`."""
    model_dtype_copy = act_bytes if act_bytes != FLOAT32_BYTES else 0
    return tokens * dims.vocab * (model_dtype_copy + 2 * FLOAT32_BYTES)


def kv_cache_bytes(dims: ModelDims, batch: int, sequence_length: int, act_bytes: int) -> int:
    """Keys and values of every block for `batch` sequences of `sequence_length` tokens:
    `2 (K and V) * n * batch * L * kv_dim * act_bytes`."""
    return 2 * dims.layers * batch * sequence_length * dims.kv_dim * act_bytes


def generation_working_bytes(dims: ModelDims, batch: int, query_length: int, act_bytes: int) -> int:
    """Transient buffers of generation besides the KV cache: one block's intermediates during the prefill of
    `batch * query_length` tokens (`3h + 2 kv_dim + 2I` elements per token: normalised input, q, attention output,
    residual, new k and v, MLP hidden) and, per decoding step, the last position's float32 logits, processed
    scores and sampling probabilities (`3 * batch * V * 4`)."""
    prefill = batch * query_length * (3 * dims.hidden + 2 * dims.kv_dim + 2 * dims.intermediate) * act_bytes
    return prefill + 3 * batch * dims.vocab * FLOAT32_BYTES
