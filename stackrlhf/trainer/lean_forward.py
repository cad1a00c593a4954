"""What the PPO step's forward passes keep alive, and how to keep less with the same numbers.

Tools for `PPOTrainer`'s forward passes and rollouts:

- `token_logprobs_and_entropy`: log π(a_t|s_t) of the taken tokens (and the policy entropy) from the last hidden
  states, applying the language-model head a chunk of tokens at a time. TRL 0.11.4 took the whole
  `(batch, seq, vocab)` logits, upcast them to float32 and kept their log-softmax for the backward pass: at a 50k
  vocabulary that is 0.2 MB per token and copy. Here at most `CHUNK_ELEMENTS` logits exist at once; with gradients
  each chunk is checkpointed, so the backward pass recomputes its logits instead of keeping them. The arithmetic
  per token is the same (head, float32 upcast, log-softmax, gather), so the results equal 0.11.4's to rounding.
- `eval_mode`: a module in eval mode for a block, each submodule's mode restored after it.
- `checkpointed_eval_forward`: activation checkpointing in the training forward passes. 0.11.4 runs them in eval
  mode (no dropout), and transformers only checkpoints layers in training mode, so requesting gradient
  checkpointing saved nothing in the PPO step. Within this context the model stays in eval mode while each
  checkpointing layer passes transformers' gate; the layer itself then runs (and is recomputed) in eval mode.
  Checkpoints are reentrant when the layer input requires gradients: the non-reentrant kind keeps what autograd
  functions stash on their context, such as bitsandbytes' 8-bit matmul inputs (Tim Dettmers' LLM.int8 backward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from stackrlhf.core import entropy_from_logits

CHUNK_ELEMENTS = 2**22
"""Logits elements computed at once by `token_logprobs_and_entropy`: 16 MiB in float32."""


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """`module` and its children in eval mode, each restored on exit. A checkpoint's recomputation runs in the
    backward pass, after `PPOTrainer.train_minibatch` has put the model in training mode: this keeps it
    identical to the forward pass. `PPOTrainer.generate` samples in it too, so that rollouts come from the policy
    whose log-probs the eval-mode forward passes compute."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training


def _chunk_logprobs(
    hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`hidden (tokens, h)`, `labels (tokens,)` → log-probs `(tokens,)` and, detached, entropies `(tokens,)`."""
    with eval_mode(head):
        logits = head(hidden).float()  # as the value-head model's forward upcasts its logits
    logprobs = torch.gather(F.log_softmax(logits, dim=-1), -1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
    return logprobs, entropy


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    with_entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (nats) of `labels`, and optionally the entropy, of `softmax(head(hidden))`.

    Args:
        hidden: `(batch, seq, hidden)`, the states that enter the language-model head.
        labels: `(batch, seq)` token ids, the token predicted at each position.
        head: the language-model head (`get_output_embeddings()`), applied to `chunk_elements // vocab` tokens at
            a time; with gradients each chunk is checkpointed (recomputed in the backward pass).
        with_entropy: also return the entropy per position (no gradient: it is a statistic).

    Returns:
        logprobs `(batch, seq)` float32, differentiable; entropy `(batch, seq)` float32 or None.
    """
    vocab = head.weight.shape[0] if hasattr(head, "weight") else head.out_features
    tokens_per_chunk = max(1, chunk_elements // vocab)
    track_gradients = torch.is_grad_enabled() and hidden.requires_grad
    logprob_rows, entropy_rows = [], []
    for row_hidden, row_labels in zip(hidden, labels, strict=True):
        logprob_chunks, entropy_chunks = [], []
        for start in range(0, row_labels.shape[0], tokens_per_chunk):
            chunk = (row_hidden[start : start + tokens_per_chunk], row_labels[start : start + tokens_per_chunk])
            if track_gradients:
                logprobs, entropy = checkpoint(_chunk_logprobs, *chunk, head, with_entropy, use_reentrant=False)
            else:
                logprobs, entropy = _chunk_logprobs(*chunk, head, with_entropy)
            logprob_chunks.append(logprobs)
            entropy_chunks.append(entropy)
        logprob_rows.append(torch.cat(logprob_chunks))
        if with_entropy:
            entropy_rows.append(torch.cat(entropy_chunks))
    return torch.stack(logprob_rows), torch.stack(entropy_rows) if with_entropy else None


def _checkpoint_in_eval_mode(layer: nn.Module, function: Callable, *args, **kwargs):
    """transformers' per-layer checkpoint function, with `layer` (and its children) in eval mode while it runs
    and while it is recomputed."""

    def run(*inputs):
        with eval_mode(layer):
            return function(*inputs)

    kwargs.pop("use_reentrant", None)
    reentrant = any(isinstance(value, torch.Tensor) and value.requires_grad for value in args)
    return checkpoint(run, *args, use_reentrant=reentrant, **kwargs)


@contextmanager
def checkpointed_eval_forward(model: nn.Module) -> Iterator[None]:
    """Eval mode for `model` (no dropout anywhere), with activation checkpointing still running in the layers that
    have it enabled. Restores each layer's state on exit (checkpoints taken inside keep their eval-mode
    recomputation for the backward pass)."""
    model.eval()
    layers = [
        module
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing
    ]
    saved = [(layer, layer.__dict__.get("_gradient_checkpointing_func")) for layer in layers]
    for layer in layers:
        layer.training = True  # the gate only: `_checkpoint_in_eval_mode` runs the layer in eval mode
        layer._gradient_checkpointing_func = partial(_checkpoint_in_eval_mode, layer)
    try:
        yield
    finally:
        for layer, function in saved:
            layer.training = False
            if function is None:
                del layer._gradient_checkpointing_func
            else:
                layer._gradient_checkpointing_func = function
