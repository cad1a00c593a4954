"""The PPO helpers that StackLLaMA-era scripts import from `trl.core` (and a few from `trl.trainer.utils`).

TRL 1.13+ removed them together with the classic `PPOTrainer`. They are re-implemented here with the names,
signatures, defaults and numerics of TRL 0.11.4, so that `from trl.core import X` becomes `from stackrlhf.core
import X` and nothing else changes. A handful of helpers that only older TRL releases had (`average_torch_dicts`,
`add_suffix`, `pad_to_size`, `listify_batch`, `build_bert_batch_from_txt`) are included for the earliest
StackLLaMA scripts.

Shape conventions in the docstrings: `batch` is the number of sequences, `seq` the number of token positions and
`vocab` the vocabulary size. Log-probabilities are natural logarithms (nats).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import TopKLogitsWarper, TopPLogitsWarper, is_torch_npu_available, is_torch_xpu_available

__all__ = [
    "WANDB_PADDING",
    "AdaptiveKLController",
    "FixedKLController",
    "LengthSampler",
    "PPODecorators",
    "RunningMoments",
    "add_suffix",
    "average_torch_dicts",
    "build_bert_batch_from_txt",
    "clip_by_value",
    "convert_to_scalar",
    "entropy_from_logits",
    "exact_div",
    "flatten_dict",
    "get_global_statistics",
    "listify_batch",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pad_to_size",
    "respond_to_batch",
    "set_seed",
    "stack_dicts",
    "stats_to_np",
    "top_k_top_p_filtering",
    "whiten",
]

WANDB_PADDING = -1
"""Fill value `stack_dicts` uses for the missing tail of shorter statistics (shown as -1 in trackers)."""

# Added to variances before the inverse square root in `whiten` / `masked_whiten`, so constant inputs give 0, not NaN.
_WHITEN_EPS = 1e-8


# --------------------------------------------------------------------------------------------------------------------
# Dictionaries of statistics
# --------------------------------------------------------------------------------------------------------------------


def flatten_dict(nested: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flatten nested mappings into one level, joining the keys on the path with `sep`.

    `{"a": {"b": 1}, "c": 2}` becomes `{"a/b": 1, "c": 2}`. An empty nested mapping contributes no key.

    Raises:
        ValueError: a key already contains `sep` (the flat key would be ambiguous).
    """
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if sep in key:
                raise ValueError(f"separator '{sep}' not allowed to be in key '{key}'")
            if isinstance(value, Mapping):
                visit(value, prefix + key + sep)
            else:
                flat[prefix + key] = value

    visit(nested, "")
    return flat


def convert_to_scalar(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Replace every one-element tensor or array (shape `()` or `(1,)`) by its Python number.

    TensorBoard ignores array-valued statistics, so this keeps scalars visible there. Other values pass through.
    """
    converted: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, (torch.Tensor, np.ndarray)) and (
            value.ndim == 0 or (value.ndim == 1 and value.shape[0] == 1)
        ):
            value = value.item()
        converted[key] = value
    return converted


def stack_dicts(stats_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-mini-batch statistics key by key.

    Each value is flattened; key `k` of the result has shape `(len(stats_dicts), longest flattened length)`, with
    shorter rows padded by `WANDB_PADDING`. The keys are those of the first dict.
    """
    stacked: dict[str, torch.Tensor] = {}
    for key in stats_dicts[0]:
        rows = [torch.flatten(d[key]) for d in stats_dicts]
        stacked[key] = pad_sequence(rows, batch_first=True, padding_value=WANDB_PADDING)
    return stacked


def average_torch_dicts(list_of_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Average same-shaped tensors key by key: `{k: mean_i(d_i[k])}`, the mean taken over the list (TRL <= 0.4)."""
    return {key: torch.mean(torch.stack([d[key] for d in list_of_dicts]), dim=0) for key in list_of_dicts[0]}


def stats_to_np(stats_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Move tensors to CPU numpy arrays (bfloat16 via float32, which numpy lacks); make numpy/Python scalars floats."""
    converted: dict[str, Any] = {}
    for key, value in stats_dict.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value = value.float()
            value = value.numpy()
        if np.isscalar(value):
            value = float(value)
        converted[key] = value
    return converted


def add_suffix(input_dict: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    """Append `suffix` to every key (TRL <= 0.4)."""
    return {key + suffix: value for key, value in input_dict.items()}


# --------------------------------------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------------------------------------


def pad_to_size(tensor: torch.Tensor, size: int, dim: int = 1, padding: int = 50256) -> torch.Tensor:
    """Right-pad the LAST dimension of `tensor` with `padding` up to `size` (TRL <= 0.4).

    `dim` only chooses which dimension's current length is compared with `size`; as in TRL, the padding itself is
    always applied to the last dimension, so pass a tensor whose dimension `dim` is its last one (e.g. `(1, seq)`
    with `dim=1`). The default `padding` is GPT-2's end-of-text token id.
    """
    current = tensor.size(dim)
    if current == size:
        return tensor
    return F.pad(tensor, (0, size - current), "constant", padding)


def listify_batch(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Split a tensor along its first dimension into a list of its rows (TRL <= 0.4)."""
    return [tensor[i] for i in range(tensor.shape[0])]


def build_bert_batch_from_txt(
    text_list: Sequence[str], tokenizer: Any, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize texts for a BERT-style classifier, right-padded with id 0 (TRL <= 0.4).

    Returns:
        `(input_ids, attention_mask)`, both of shape `(len(text_list), longest tokenized length)` on `device`;
        `input_ids` has the tokenizer's integer dtype and `attention_mask` is float (1 for tokens, 0 for padding).
    """
    encoded = [tokenizer.encode(text, return_tensors="pt").to(device) for text in text_list]
    max_len = max(ids.size(1) for ids in encoded)
    input_ids = torch.cat([pad_to_size(ids, max_len, padding=0) for ids in encoded])
    attention_mask = torch.cat(
        [pad_to_size(torch.ones(ids.size(), device=device), max_len, padding=0) for ids in encoded]
    )
    return input_ids, attention_mask


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Log-probabilities (nats) of `labels` under the softmax of `logits`.

    Args:
        logits: `(batch, seq, vocab)` unnormalised scores.
        labels: `(batch, seq)` token ids in `[0, vocab)`.
        gather: if False, return the whole `(batch, seq, vocab)` log-softmax instead of picking the labels.

    Returns:
        `(batch, seq)`: `log softmax(logits)[b, t, labels[b, t]]` (or the full log-softmax, see `gather`).
    """
    logp = F.log_softmax(logits, dim=-1)
    if not gather:
        return logp
    return torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise over all elements: `(values - mean) / sqrt(var + 1e-8)`, with the unbiased (n - 1) variance.

    With `shift_mean=False` the mean is added back, so only the scale changes. The output has the input's shape.
    """
    mean, var = torch.mean(values), torch.var(values)
    whitened = (values - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        whitened += mean
    return whitened


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of the elements where `mask` is 1: `sum(values * mask) / sum(mask)`.

    Args:
        values: any shape, e.g. `(batch, seq)`.
        mask: same shape as `values` (or broadcastable), 1 for positions to include and 0 for padding.
        axis: reduce only along this dimension; None (default) reduces over all elements to a scalar.
    """
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the elements where `mask` is 1, as a scalar tensor.

    With `unbiased=True` (default) Bessel's correction `n / (n - 1)` is applied, `n = sum(mask)`. As in TRL 0.11.4 a
    mask with a single 1 divides by zero (the result is inf or NaN) rather than raising.

    Raises:
        ValueError: `unbiased` and the mask is all zeros (typically `mini_batch_size=1` with an empty response).
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError(
                "The sum of the mask is zero, which can happen when `mini_batch_size=1`; "
                "try increase the `mini_batch_size` or `gradient_accumulation_steps`"
            )
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise with the statistics of the masked elements: `(values - masked_mean) / sqrt(masked_var + 1e-8)`.

    Every element is transformed, masked or not; the variance is the unbiased one (see `masked_var`). With
    `shift_mean=False` the mean is added back. The output has the shape of `values`.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        whitened += mean
    return whitened


def clip_by_value(x: torch.Tensor, tensor_min: torch.Tensor | float, tensor_max: torch.Tensor | float) -> torch.Tensor:
    """Element-wise `max(min(x, tensor_max), tensor_min)`; the bounds are numbers or tensors broadcastable to `x`.

    PPO's value clipping uses it with per-element bounds `old_values -/+ cliprange_value`.
    """
    if not isinstance(tensor_min, torch.Tensor):
        tensor_min = torch.tensor(tensor_min, dtype=x.dtype, device=x.device)
    if not isinstance(tensor_max, torch.Tensor):
        tensor_max = torch.tensor(tensor_max, dtype=x.dtype, device=x.device)
    return torch.max(torch.min(x, tensor_max), tensor_min)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax distribution over the last dimension: `logsumexp(z) - sum(softmax(z) * z)`.

    `logits: (batch, seq, vocab)` gives `(batch, seq)`; in general the last dimension is reduced.
    """
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)


def exact_div(a: int, b: int, custom_error_message: str = "") -> int:
    """`a // b`, requiring that `b` divides `a` exactly.

    Raises:
        ValueError: `"{custom_error_message}, inexact division: {a} / {b} = {a / b}"` when it does not.
    """
    quotient = a // b
    if a != quotient * b:
        raise ValueError(f"{custom_error_message}, inexact division: {a} / {b} = {a / b}")
    return quotient


# --------------------------------------------------------------------------------------------------------------------
# Sampling and seeding
# --------------------------------------------------------------------------------------------------------------------


def top_k_top_p_filtering(
    logits: torch.Tensor,
    top_k: int = 0,
    top_p: float = 1.0,
    filter_value: float = -float("inf"),
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """Set to `filter_value` the logits outside the top-k and outside the nucleus (top-p, Holtzman et al. 2019).

    Args:
        logits: `(batch, vocab)` next-token scores.
        top_k: keep only the `top_k` highest logits; 0 disables top-k.
        top_p: keep the smallest set of tokens whose probabilities sum to at least `top_p`; 1.0 keeps every token
            of non-zero probability.
        min_tokens_to_keep: never filter below this many tokens per row.
    """
    if top_k > 0:
        logits = TopKLogitsWarper(top_k=top_k, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep)(
            None, logits
        )
    if 0 <= top_p <= 1.0:
        logits = TopPLogitsWarper(top_p=top_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep)(
            None, logits
        )
    return logits


def respond_to_batch(
    model: nn.Module, queries: torch.Tensor, txt_len: int = 20, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Sample `txt_len` tokens after each query, one forward pass per token (no KV cache).

    Args:
        model: a causal LM whose output's first element is `(batch, seq, vocab)` logits.
        queries: `(batch, query_len)` token ids, all queries of the same length.
        txt_len: number of tokens to sample.
        top_k, top_p: filtering of each step's distribution (see `top_k_top_p_filtering`).

    Returns:
        `(batch, txt_len)` sampled token ids (the queries are not included).
    """
    input_ids = queries
    for _ in range(txt_len):
        next_token_logits = model(input_ids)[0][:, -1, :]
        next_token_logits = top_k_top_p_filtering(next_token_logits, top_k=top_k, top_p=top_p)
        probs = F.softmax(next_token_logits, dim=-1)
        next_token = torch.multinomial(probs, num_samples=1).squeeze(1)
        input_ids = torch.cat([input_ids, next_token.unsqueeze(-1)], dim=-1)
    return input_ids[:, -txt_len:]


def set_seed(seed: int) -> None:
    """Seed Python's `random`, numpy's global generator and torch (CPU and every XPU, NPU or CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if is_torch_xpu_available():
        torch.xpu.manual_seed_all(seed)
    elif is_torch_npu_available():
        torch.npu.manual_seed_all(seed)
    else:
        torch.cuda.manual_seed_all(seed)


class LengthSampler:
    """Draw integers uniformly from `[min_value, max_value)` (max excluded) with numpy's global generator.

    Typically used to pick query or response lengths in tokens; `set_seed` makes the draws reproducible.
    """

    def __init__(self, min_value: int, max_value: int):
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return np.random.choice(self.values)


class PPODecorators:
    """Holder of `empty_device_cache`, the context manager that frees accelerator memory after PPO's big steps.

    Set the class attribute `optimize_device_cache` to True (the trainer copies `PPOConfig.optimize_device_cache`
    into it) to make the context manager collect garbage and empty the XPU, NPU or CUDA cache on exit.
    """

    optimize_device_cache: bool = False

    @classmethod
    @contextmanager
    def empty_device_cache(cls) -> Iterator[None]:
        yield
        if not cls.optimize_device_cache:
            return
        if is_torch_xpu_available():
            empty_cache = torch.xpu.empty_cache
        elif is_torch_npu_available():
            empty_cache = torch.npu.empty_cache
        elif torch.cuda.is_available():
            empty_cache = torch.cuda.empty_cache
        else:
            return
        gc.collect()
        empty_cache()
        gc.collect()


# --------------------------------------------------------------------------------------------------------------------
# KL coefficient control (trl.trainer.utils in 0.11.4)
# --------------------------------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """KL-penalty coefficient that steers the observed KL towards `target` (Ziegler et al. 2019, eq. 2).

    On each `update(current, n_steps)`:
        `proportional_error = clip(current / target - 1, -0.2, 0.2)`
        `value *= 1 + proportional_error * n_steps / horizon`

    Args:
        init_kl_coef: starting coefficient `beta`.
        target: desired KL divergence between policy and reference (nats, summed over the response tokens).
        horizon: number of samples (not optimizer steps) over which the coefficient adapts; larger is slower.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        """Adapt `value` given the KL `current` measured over a batch of `n_steps` samples."""
        proportional_error = np.clip(current / self.target - 1, -0.2, 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """KL-penalty coefficient that stays at `kl_coef`; `update` is a no-op with the adaptive controller's signature."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""


# --------------------------------------------------------------------------------------------------------------------
# Running reward statistics (trl.trainer.utils in 0.11.4)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def get_global_statistics(
    accelerator: Accelerator, xs: torch.Tensor, mask: torch.Tensor | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and (biased, divide-by-count) variance of `xs` over all processes, and the global element count.

    With `mask`, only elements where it is 1 count. The mean and variance come back as 0-d tensors on `device`.
    """
    xs = xs.to(accelerator.device)
    sum_and_count = torch.tensor([xs.sum(), (xs.numel() if mask is None else mask.sum())], device=xs.device)
    global_sum, count = accelerator.reduce(sum_and_count)
    global_mean = global_sum / count

    squared_deviation = (xs - global_mean) ** 2
    sum_var = torch.sum(squared_deviation if mask is None else squared_deviation.mul(mask))
    global_var = accelerator.reduce(sum_var) / count

    return global_mean.to(device), global_var.to(device), count.item()


@dataclass
class RunningMoments:
    """Running mean and standard deviation of a stream of scores, merged batch by batch (Chan et al. / Welford).

    Used by PPO's `use_score_scaling` to normalise rewards. `mean`, `var` (biased) and `std` (unbiased) describe
    every element seen so far; `count` starts at a tiny positive number so the first merge needs no special case.
    All four are Python floats after the first `update`. With several processes the batch statistics are computed
    across all of them.
    """

    accelerator: Accelerator
    mean: float = 0
    std: float = 1
    var: float = 1
    count: float = 1e-24

    @torch.no_grad()
    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Merge the batch `xs` (any shape) into the running moments.

        Returns:
            `(mean, std)` of this batch alone, the std with Bessel's correction (NaN for a single element).
        """
        if self.accelerator.use_distributed:
            xs_mean, xs_var, xs_count = get_global_statistics(self.accelerator, xs)
        else:
            xs_count = xs.numel()
            xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        xs_mean, xs_var = xs_mean.float(), xs_var.float()

        delta = xs_mean - self.mean
        tot_count = self.count + xs_count

        # Sums of squared deviations: the old one is re-centred on the merged mean (parallel-variance formula).
        new_sum = xs_var * xs_count
        old_sum = self.var * self.count + delta**2 * self.count * xs_count / tot_count
        tot_sum = old_sum + new_sum

        self.mean += (delta * xs_count / tot_count).item()
        new_var = tot_sum / tot_count
        self.std = (new_var * tot_count / (tot_count - 1)).float().sqrt().item()
        self.var = new_var.item()
        self.count = tot_count

        return xs_mean.item(), (xs_var * xs_count / (xs_count - 1)).float().sqrt().item()

    def save_to_json(self, json_path: str) -> None:
        """Write `mean`, `std`, `var` and `count` as JSON to `json_path` (from the main process only)."""
        if self.accelerator.is_main_process:
            state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "accelerator"}
            with open(json_path, "w", encoding="utf-8") as f:
                f.write(json.dumps(state, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_from_json(cls, accelerator: Accelerator, json_path: str) -> RunningMoments:
        """Restore moments written by `save_to_json`, attached to `accelerator`."""
        with open(json_path, encoding="utf-8") as f:
            return cls(accelerator=accelerator, **json.load(f))
