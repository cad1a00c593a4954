"""Transient memory of one step: activations, the dequantized weight, logits buffers, hidden states and KV cache.

Units: bytes. Shapes use b (sequences in one forward pass), L (tokens per sequence), so `tokens = b * L`;
h hidden width, I feed-forward width, `kv_dim` key (= value) width per token, V vocabulary, n layers, and
`act_bytes` the bytes of one activation element (4 when the hidden states are float32, 2 in bf16).

The coefficients are counts of `(tokens, h)` and `(tokens, I)` buffers alive at a peak, read off the storages that
`stackrlhf.memory.MemoryTracker` found alive at that peak while the project's own steps ran (PPO through
`PPOTrainer.step`, SFT and reward through the models' training forward/backward), on models of each MLP kind; see
`benchmarks/memory_depth_sweep.py`. Weights are not here: they are persistent (`estimate.py`).
"""

from __future__ import annotations

from stackrlhf.planner.inventory import ModelDims

FLOAT32_BYTES = 4
HEAD_CHUNK_ELEMENTS = 2**22
"""`stackrlhf.trainer.lean_forward.CHUNK_ELEMENTS`: logits the PPO step computes at once (kept equal; tested)."""
FUSED_HEAD_TOKENS = 4096
"""`trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE`: tokens per tile of TRL's fused LM head (kept equal; tested)."""
FUSED_HEAD_COLUMNS = 32768
"""`trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE`: vocabulary columns per tile of TRL's fused LM head; its tile buffer
has this width whatever the vocabulary (kept equal; tested)."""
FUSED_HEAD_TOKEN_FLOATS = 8
"""float32 values per token the fused head keeps (running max, sums of exponentials, target logit, log-probability,
entropy, ...)."""

# (forward, backward) counts of (tokens, I) buffers alive at the peak of one block's no-grad forward pass and of
# its (recomputed) backward pass, per MLP activation. Separate-op activations keep their intermediates: GPT-2's
# gelu_new is 0.5 x (1 + tanh(c (x + 0.044715 x^3))), gpt-neox's gelu_fast one more product.
MLP_BUFFERS: dict[str, tuple[float, float]] = {
    "gated": (4.5, 5.0),  # silu(gate x) * up x (Llama, Mistral): fused silu, gate, up, product
    "fused": (3.5, 2.0),  # relu / exact gelu / tanh gelu as one operator (OPT, Falcon)
    "gelu_new": (4.25, 7.0),
    "gelu_fast": (5.25, 10.0),
}
UNFUSED_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_fast": "gelu_fast", "quick_gelu": "gelu_new"}
TRAINING_MODE_MLP_BUFFERS = 1.5
"""(tokens, I) buffers a block's backward pass holds in training mode beyond eval mode (measured on Llama's SFT and
reward steps: bitsandbytes' and LoRA's training-mode paths keep more of the MLP)."""
BLOCK_HIDDEN_BUFFERS = 6
"""(tokens, h) buffers of one block's backward pass besides its input: normalised inputs, attention output and
the gradients flowing through the residual stream (measured 4 to 9 across Llama, gpt-neox, GPT-2 and OPT)."""


def mlp_buffers(dims: ModelDims) -> tuple[float, float]:
    """`MLP_BUFFERS` entry for the model's MLP kind."""
    if dims.gated_mlp:
        return MLP_BUFFERS["gated"]
    return MLP_BUFFERS[UNFUSED_ACTIVATIONS.get(dims.activation, "fused")]


def block_activation_elements(dims: ModelDims, lora_elements: int = 0) -> int:
    """Elements autograd keeps, per token, for one transformer block's backward pass (no checkpointing).

    Derivation (pre-norm block, scaled-dot-product attention that keeps no `(heads, L, L)` score matrix):
        - the two norms keep their inputs: `2h`;
        - attention keeps the normalised input of the q/k/v projections (`h`), q, k and v for the attention
          backward (`h + 2 kv_dim`) and the attention output that enters the output projection (`h`);
        - the MLP keeps its normalised input (`h`) and, for `fc2(act(fc1 x))`, the activation's input and output
          (`2I`; 4 more for the separate-op GELUs); for the gated `down(act(gate x) * up x)`, gate and up
          outputs, `act(gate x)` and the product (`4I`);
        - `lora_elements`: what LoRA adds per block (`lora_elements_per_block`).
    """
    h, i = dims.hidden, dims.intermediate
    attention = h + (h + 2 * dims.kv_dim) + h
    if dims.gated_mlp:
        mlp = h + 4 * i
    else:
        mlp = h + (6 if dims.activation in UNFUSED_ACTIVATIONS else 2) * i
    return 2 * h + attention + mlp + lora_elements


def lora_elements_per_block(targeted_in_features: list[int], rank: int, layers: int, dropout: bool = True) -> int:
    """Per token and block, what LoRA keeps: each targeted layer's rank-r `A x` output (`r`) and, when its dropout
    runs (training mode: SFT and reward; the PPO step runs in eval mode), a dropped-out input copy
    (`in_features`), summed over the model's targeted layers and divided by the number of blocks."""
    per_layer = (in_features * dropout + rank for in_features in targeted_in_features)
    return sum(per_layer) // max(layers, 1)


def training_activation_bytes(
    dims: ModelDims, tokens: int, act_bytes: int, gradient_checkpointing: bool, lora_elements: int = 0
) -> int:
    """Activations kept through the backward pass of `tokens` tokens.

    With checkpointing each block keeps only its input: `n + 2` tensors of `(tokens, h)` with the embedding output
    and the final norm's output. Without it every block keeps `block_activation_elements` per token.
    """
    if gradient_checkpointing:
        return (dims.layers + 2) * dims.hidden * tokens * act_bytes
    return (dims.layers * block_activation_elements(dims, lora_elements) + 2 * dims.hidden) * tokens * act_bytes


def block_backward_bytes(
    dims: ModelDims, tokens: int, act_bytes: int, lora_elements: int = 0, training_mode: bool = False
) -> int:
    """What one block's backward pass holds at its peak besides the kept activations: its recomputed (or kept)
    activations and the gradients passing through it, `(backward MLP buffers) I + 6h` per token (+ LoRA).
    `training_mode` (SFT, reward; the PPO step runs in eval mode): `TRAINING_MODE_MLP_BUFFERS` more."""
    _, backward = mlp_buffers(dims)
    backward += TRAINING_MODE_MLP_BUFFERS if training_mode else 0
    per_token = backward * dims.intermediate + BLOCK_HIDDEN_BUFFERS * dims.hidden + lora_elements
    return int(per_token * tokens * act_bytes)


def block_forward_bytes(dims: ModelDims, tokens: int, act_bytes: int, quantization: str = "none") -> int:
    """A block's transient buffers in a forward pass without gradients (rollout, generation prefill). bitsandbytes'
    4-bit layers compute in bfloat16, so their MLP outputs take half the room of float32 activations (measured)."""
    forward, _ = mlp_buffers(dims)
    mlp_bytes = 2 if quantization == "4bit" else act_bytes
    return int(forward * dims.intermediate * tokens * mlp_bytes + 2 * dims.hidden * tokens * act_bytes)


def dequantized_weight_bytes(dims: ModelDims, quantization: str, act_bytes: int) -> int:
    """The largest quantized weight, dequantized for one matmul. bitsandbytes' int8 backward multiplies the
    gradient by `CB * SCB / 127` in the activations' dtype (its int8 forward needs no such copy); its 4-bit
    layers dequantize to the compute dtype (bfloat16 here) in the forward and backward passes alike."""
    if quantization == "8bit":
        return dims.largest_linear * act_bytes
    if quantization == "4bit":
        return dims.largest_linear * 2
    return 0


def head_chunk_bytes(dims: ModelDims, row_tokens: int, act_bytes: int, buffers: int) -> int:
    """PPO's log-probs from the head a chunk at a time (`stackrlhf.trainer.lean_forward`): `buffers` float32
    `(chunk, V)` tensors (logits, log-softmax or softmax, the entropy's product or the gradients) plus the head's own
    output when it is not float32; a chunk holds `HEAD_CHUNK_ELEMENTS // V` tokens of one sequence."""
    chunk = min(row_tokens, max(1, HEAD_CHUNK_ELEMENTS // dims.vocab)) * dims.vocab
    model_dtype_copy = act_bytes if act_bytes != FLOAT32_BYTES else 0
    return chunk * (buffers * FLOAT32_BYTES + model_dtype_copy)


def training_logits_bytes(stage: str, dims: ModelDims, tokens: int, act_bytes: int, row_tokens: int) -> int:
    """Logits buffers around the loss and its backward pass.

    - ppo: three head chunks (`head_chunk_bytes`); no `(tokens, V)` tensor exists;
    - sft: transformers' loss upcasts the whole `(tokens, V)` logits to float32 and keeps the cross-entropy's
      log-softmax, then their gradients: 3 float32 copies plus the logits in the model's dtype when not float32;
    - reward: a sequence-classification model has a `(tokens, 1)` score head and no vocabulary logits: 0.
    """
    if stage == "reward":
        return 0
    if stage == "ppo":
        return head_chunk_bytes(dims, row_tokens, act_bytes, buffers=3)
    model_dtype_copy = act_bytes if act_bytes != FLOAT32_BYTES else 0
    return tokens * dims.vocab * (model_dtype_copy + 3 * FLOAT32_BYTES)


def fused_head_saved_bytes(dims: ModelDims, tokens: int, act_bytes: int) -> int:
    """What TRL 1.16's fused LM head (`trl.trainer.utils.add_fused_lm_head`, used by its DPO, GRPO and RLOO
    trainers) keeps for its backward pass over `tokens` scored tokens: the final hidden states of those tokens gathered
    into one `(tokens, h)` tensor, and `FUSED_HEAD_TOKEN_FLOATS` float32 statistics per token."""
    return tokens * (dims.hidden * act_bytes + FUSED_HEAD_TOKEN_FLOATS * FLOAT32_BYTES)


def fused_head_bytes(dims: ModelDims, tokens: int, act_bytes: int, backward: bool) -> int:
    """TRL's fused LM head over `tokens` scored tokens: log-probabilities (and entropy) tile by tile, so no
    `(tokens, V)` logits exist. Forward: what it keeps (`fused_head_saved_bytes`) plus its tile buffer,
    `min(tokens, 4096) x 32768` logits in the compute dtype (allocated at full width, even for a smaller vocabulary).
    Backward: the same, and the float32 gradient of the hidden states, `(tokens, h)`, that it accumulates tile by tile.
    On a GPU a Triton kernel folds each tile in place; elsewhere torch operators make a few tile-sized temporaries
    more, which the plan leaves out."""
    tile = min(tokens, FUSED_HEAD_TOKENS) * FUSED_HEAD_COLUMNS * act_bytes
    gradient = tokens * dims.hidden * FLOAT32_BYTES if backward else 0
    return fused_head_saved_bytes(dims, tokens, act_bytes) + tile + gradient


def no_grad_forward_bytes(
    dims: ModelDims,
    tokens: int,
    act_bytes: int,
    dequantized: int,
    quantization: str = "none",
    head_tokens: int = 0,
) -> int:
    """A forward pass without gradients over `tokens` tokens that returns only the last hidden states or the fused
    head's log-probabilities (DPO's reference pass; GRPO/RLOO's reference log-probs and reward scores): the larger of
    one block's transient buffers (`block_forward_bytes`, with a dequantized 4-bit weight) and, at the end, the final
    hidden states `(tokens, h)` with the fused head's forward over `head_tokens` scored tokens (0: a reward model's
    score head, one value per sequence)."""
    block = block_forward_bytes(dims, tokens, act_bytes, quantization) + dequantized
    head = tokens * dims.hidden * act_bytes
    if head_tokens:
        head += fused_head_bytes(dims, head_tokens, act_bytes, backward=False)
    return max(block, head)


def rollout_bytes(
    dims: ModelDims, tokens: int, act_bytes: int, row_tokens: int, dequantized: int, quantization: str = "none"
) -> int:
    """PPO's no-grad forward passes (log π_old, log π_ref, values) over one chunk of `tokens` tokens: the hidden
    states the value-head model asks for (`n + 1` of `(tokens, h)`), then either a block's transient buffers (with
    a dequantized 4-bit weight) or two head chunks (logits and log-softmax), whichever is larger."""
    hidden_states = (dims.layers + 1) * dims.hidden * tokens * act_bytes
    block = block_forward_bytes(dims, tokens, act_bytes, quantization) + dequantized
    return hidden_states + max(block, head_chunk_bytes(dims, row_tokens, act_bytes, buffers=2))


def kv_cache_bytes(dims: ModelDims, batch: int, sequence_length: int, act_bytes: int) -> int:
    """Keys and values of every block for `batch` sequences of `sequence_length` tokens:
    `2 (K and V) * n * batch * L * kv_dim * act_bytes`."""
    return 2 * dims.layers * batch * sequence_length * dims.kv_dim * act_bytes


def generation_working_bytes(
    dims: ModelDims, batch: int, query_length: int, act_bytes: int, dequantized: int, quantization: str = "none"
) -> int:
    """Generation's transient buffers besides the final KV cache: the larger of the prefill (one block's
    buffers over `batch * query_length` tokens, a dequantized 4-bit weight) and a decoding step (the last
    position's float32 logits, processed scores and probabilities, `3 * batch * V * 4`). transformers computes
    the prefill logits of the last position only; the KV cache is planned apart, at its final length."""
    prefill = block_forward_bytes(dims, batch * query_length, act_bytes, quantization) + dequantized
    decode = 3 * batch * dims.vocab * FLOAT32_BYTES
    return max(prefill, decode)
