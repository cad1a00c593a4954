"""The memory plan: bytes per component, the peak, and which cards it fits.

Memory is modelled in phases. Persistent tensors (weights, quantization constants, LoRA weights, value head,
optimizer states) live throughout. On top of them, one phase at a time:
    - `training`: activations kept for backward, logits buffers, gradients (freed by `zero_grad` after the step);
      dpo: with the reference's no-grad forward pass, which runs while the policy's activations are kept;
    - `rollout` (ppo, grpo, rloo): the no-grad forward passes, in chunks: ppo's log π_old, log π_ref and values;
      grpo/rloo's reference log-probs and reward scores;
    - `generation` (ppo, grpo, rloo): the KV cache and decoding buffers.
What each stage runs, and so what it is planned to hold, is in the docstrings of `STAGE_TRANSIENTS`' functions.
`peak_allocated_bytes` (what `torch.cuda.max_memory_allocated` should read) is the persistent bytes plus the largest
phase. `peak_bytes` adds the caching allocator's slack (reserved but unallocated blocks, `ALLOCATOR_SLACK` of the
largest phase: transient tensors, allocated and freed step after step, are what fragment the cache; weights are
allocated once) and the CUDA context (driver, kernels; outside PyTorch's allocator): what the card must hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackrlhf.errors import ConfigError
from stackrlhf.planner import activations
from stackrlhf.planner.inventory import LinearLayer, ModelDims, ModelInventory
from stackrlhf.planner.quantization import weight_bytes
from stackrlhf.planner.records import model_record
from stackrlhf.planner.settings import GROUP_STAGES, PlanSettings
from stackrlhf.planner.training_state import lora_shapes, optimizer_state_bytes, tensor_bytes

GIB = 2**30
CARDS_GB = (16, 24, 40, 80)
CUDA_CONTEXT_BYTES = 512 * 2**20
"""CUDA context of one process (driver state, loaded kernels, cuBLAS handles): about 0.5 GiB with torch 2.x."""
ALLOCATOR_SLACK = 0.10
"""Fraction of the largest phase the caching allocator holds in reserved, unallocated blocks (fragmentation)."""
MAX_BATCH_SEARCHED = 2**14
FLOAT32_BYTES = 4


@dataclass
class MemoryPlan:
    """The planner's answer (bytes throughout).

    Attributes:
        settings: what was planned for.
        params_total: parameters of the (policy) model, exact, from the meta-device model.
        trainable_params: parameters that get gradients (LoRA matrices and heads, or all of them).
        gradient_checkpointing: whether the plan assumes activation recomputation.
        components: bytes per component (see `COMPONENT_HELP`); phase components are not all alive at once.
        phases: bytes of each phase's transient components (`training`, `rollout`, `generation`).
        peak_phase: the phase with the most transient bytes.
        peak_allocated_bytes: persistent + largest phase: what `torch.cuda.max_memory_allocated` should read.
        peak_bytes: `peak_allocated_bytes` + allocator slack + CUDA context: what the card must hold.
        fits: `peak_bytes` fits `settings.gpu_memory_gb`.
        verdicts: fits, per card size in GB (16, 24, 40, 80).
        max_batch_size: the largest `batch_size` that fits `settings.gpu_memory_gb` (mini batch capped at it);
            0 when even 1 does not fit. For ppo the rollout batch itself costs next to nothing (generation and the
            forward passes run in chunks): `limits` says what bounds memory.
        limits: what bounds memory, each the largest value that fits `settings.gpu_memory_gb` with the other
            settings as given (0: even 1 does not fit), see `LIMITS` and `limit_settings`. ppo: `mini_batch_size`
            (training and rollout forward passes), `generation_batch_size` (sequences generated at once) and
            `response_length`; sft, reward and dpo: `batch_size` (sequences, or pairs, per step) and
            `sequence_length`; grpo and rloo: `batch_size` (completions per forward/backward pass),
            `num_generations` (completions per prompt) and `response_length` (completion tokens).
        limit_bounds: the upper end of each search: the model's context for the lengths (when its config gives
            one), `MAX_BATCH_SEARCHED` for the batches. A limit equal to its bound means everything up to it fits.
        activation_precision: `float32` or `16-bit`: the dtype of the activations, KV cache and non-quantized
            weights the plan assumed (from `quantization` and `upcast_non_quantized`).
    """

    settings: PlanSettings
    params_total: int
    trainable_params: int
    gradient_checkpointing: bool
    components: dict[str, int]
    phases: dict[str, int]
    peak_phase: str
    peak_allocated_bytes: int
    peak_bytes: int
    fits: bool
    verdicts: dict[int, bool] = field(default_factory=dict)
    max_batch_size: int = 0
    limits: dict[str, int] = field(default_factory=dict)
    limit_bounds: dict[str, int] = field(default_factory=dict)
    activation_precision: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, settings as a dict, verdict keys as strings."""
        values = dataclasses.asdict(self)
        values["verdicts"] = {f"{gb}GB": fits for gb, fits in self.verdicts.items()}
        return values


COMPONENT_HELP = {
    "quantized_weights": "int8 or packed 4-bit weights of the quantized linear layers",
    "quantization_constants": "8-bit row scales (SCB); 4-bit absmax, code tables, nested constants",
    "unquantized_weights": "embeddings, lm_head, norms, biases (and all weights when not quantized), buffers",
    "other_models": "separate copies: reward + critic (chatllama), reference (+ reward) without LoRA, a reward_model",
    "lora_weights": "LoRA A and B matrices, float32 (plus the frozen reward adapter on a shared base)",
    "value_head": "value head (ppo), score head (reward; grpo/rloo: the reward adapter's, frozen), float32",
    "gradients": "gradients of the trainable parameters",
    "optimizer_states": "optimizer states of the trainable parameters",
    "activations": "activations kept for the backward pass (with checkpointing: each block's input)",
    "block_backward": "one block's recomputed activations and gradients during its backward pass",
    "dequantized_weight": "the largest quantized weight, dequantized for one matmul (8bit backward, 4bit always)",
    "logits": "logits buffers of the loss and its backward pass (ppo: head chunks; dpo/grpo/rloo: TRL's fused head)",
    "reference_forward": "dpo: the reference's no-grad forward pass, run while the policy's activations are kept",
    "rollout": "no-grad forward passes in chunks (ppo: log-probs, values; grpo/rloo: reference log-probs, rewards)",
    "kv_cache": "keys and values during generation (ppo, grpo, rloo)",
    "generation_buffers": "prefill intermediates and per-step logits during generation (ppo, grpo, rloo)",
    "allocator_slack": "reserved but unallocated memory of PyTorch's caching allocator",
    "cuda_context": "CUDA context, outside PyTorch's allocator",
}

PERSISTENT_COMPONENTS = frozenset(
    {
        "quantized_weights",
        "quantization_constants",
        "unquantized_weights",
        "other_models",
        "lora_weights",
        "value_head",
        "optimizer_states",
    }
)


def plan(settings: PlanSettings | None = None, *, max_batch: bool = True, **overrides: Any) -> MemoryPlan:
    """Plan the memory of `settings` (or `PlanSettings(**overrides)`, or settings with fields replaced).

    `max_batch=False` skips the searches for the largest batch and the limits (`max_batch_size` stays 0, `limits`
    empty).

    Example: `plan(model="EleutherAI/gpt-neox-20b", stage="ppo", quantization="8bit", lora_r=16).peak_bytes`.

    Raises:
        ConfigError: unknown model, LoRA targets the model lacks, or settings `PlanSettings.check` rejects.
    """
    settings = dataclasses.replace(settings or PlanSettings(), **overrides)
    settings.check()
    result = estimate(settings)
    result.verdicts = {gb: result.peak_bytes <= gb * GIB for gb in CARDS_GB}
    if max_batch:
        result.max_batch_size = largest_batch(settings)
        result.limits, result.limit_bounds = search_limits(settings)
    return result


def estimate(settings: PlanSettings) -> MemoryPlan:
    """Components, phases and peak of `settings` (already checked); verdicts and max batch left empty."""
    stage = settings.stage
    policy = _inventory(settings.model, "reward" if stage == "reward" else "causal_lm")
    targets = lora_targets(policy, settings)
    kbit = settings.quantization in ("8bit", "4bit")
    # kbit training upcasts the non-quantized weights to float32 unless told not to
    float_bytes = (
        2 if settings.quantization == "bf16" or (kbit and not settings.upcast_non_quantized) else FLOAT32_BYTES
    )
    act_bytes = float_bytes
    frozen_float_bytes = 2 if settings.quantization != "none" else FLOAT32_BYTES
    dims = policy.dims

    weights = weight_bytes(policy, settings.quantization, settings.double_quant, float_bytes)
    trainable = _trainable_shapes(policy, targets, settings)
    head_shapes = [] if stage in ("sft", "dpo") else [(1, dims.hidden), (1,)]
    if stage in GROUP_STAGES:  # the reward adapter's score head (frozen), or none with a separate reward model
        head_shapes = [] if settings.reward_model else [(1, dims.hidden)]
    components = {
        "quantized_weights": weights.quantized,
        "quantization_constants": weights.constants,
        "unquantized_weights": weights.unquantized,
        "other_models": _other_models_bytes(settings, frozen_float_bytes, float_bytes),
        "lora_weights": tensor_bytes(trainable["lora"], FLOAT32_BYTES),
        "value_head": tensor_bytes(head_shapes, FLOAT32_BYTES),
    }
    if settings.lora_r > 0 and _reward_adapter(settings):
        components["lora_weights"] *= 2  # the frozen reward adapter has the policy adapter's shapes
    trained = [(trainable["lora"], FLOAT32_BYTES), (trainable["full"], float_bytes)]
    if stage in ("ppo", "reward"):
        trained.append((head_shapes, FLOAT32_BYTES))  # the value head, the score head
    if stage == "ppo" and settings.design == "chatllama":
        trained *= 2  # the critic is trained like the actor
    components["gradients"] = sum(tensor_bytes(shapes, size) for shapes, size in trained)
    components["optimizer_states"] = sum(
        optimizer_state_bytes(shapes, size, settings.optimizer) for shapes, size in trained
    )

    step = _Step(settings, dims, [layer.in_features for layer in targets], act_bytes)
    transient, phases = STAGE_TRANSIENTS[stage](step, components["gradients"])
    components |= transient
    persistent = sum(components[name] for name in PERSISTENT_COMPONENTS)
    peak_phase = max(phases, key=phases.get)
    peak_allocated = persistent + phases[peak_phase]
    components["allocator_slack"] = math.ceil(ALLOCATOR_SLACK * phases[peak_phase])
    components["cuda_context"] = CUDA_CONTEXT_BYTES
    peak = peak_allocated + components["allocator_slack"] + CUDA_CONTEXT_BYTES
    trainable_params = sum(math.prod(shape) for shapes, _ in trained for shape in shapes)
    return MemoryPlan(
        settings=settings,
        params_total=policy.params_total,
        trainable_params=trainable_params,
        gradient_checkpointing=settings.checkpointing,
        components=components,
        phases=phases,
        peak_phase=peak_phase,
        peak_allocated_bytes=peak_allocated,
        peak_bytes=peak,
        fits=peak <= settings.gpu_memory_gb * GIB,
        activation_precision="float32" if act_bytes == FLOAT32_BYTES else "16-bit",
    )


@dataclass(frozen=True)
class _Step:
    """What the transient formulas of every stage share: the settings, the policy's sizes, the input widths of the
    LoRA-targeted layers and the bytes of one activation element."""

    settings: PlanSettings
    dims: ModelDims
    lora_in_features: list[int]
    act_bytes: int

    def lora_elements(self, dropout: bool) -> int:
        """What LoRA keeps per token and block (`activations.lora_elements_per_block`)."""
        return activations.lora_elements_per_block(
            self.lora_in_features, self.settings.lora_r, self.dims.layers, dropout=dropout
        )

    def dequantized(self) -> int:
        """The largest quantized weight dequantized for a training matmul (`activations.dequantized_weight_bytes`)."""
        return activations.dequantized_weight_bytes(self.dims, self.settings.quantization, self.act_bytes)

    def no_grad_dequantized(self) -> int:
        """The same in a forward pass without gradients: only 4-bit layers dequantize there (int8 forward: no copy)."""
        return self.dequantized() if self.settings.quantization == "4bit" else 0

    def training(self, tokens: int, logits: int, *, dropout: bool, training_mode: bool) -> dict[str, int]:
        """The training-phase components of a forward/backward pass over `tokens` tokens with `logits` bytes of head
        buffers."""
        lora_elements = self.lora_elements(dropout)
        dims, act_bytes = self.dims, self.act_bytes
        return {
            "activations": activations.training_activation_bytes(
                dims, tokens, act_bytes, self.settings.checkpointing, lora_elements
            ),
            "block_backward": activations.block_backward_bytes(
                dims, tokens, act_bytes, lora_elements, training_mode=training_mode
            ),
            "dequantized_weight": self.dequantized(),
            "logits": logits,
        }


Transients = tuple[dict[str, int], dict[str, int]]


def _training_phase(components: dict[str, int], gradients: int, *extra_peaks: int) -> int:
    """Kept activations, gradients and the largest of what comes and goes on top of them: the loss's logits (freed,
    PPO: chunk by chunk, before the blocks' backward passes begin), one block's backward pass with its dequantized
    weight, and `extra_peaks`."""
    backward = components["block_backward"] + components["dequantized_weight"]
    return components["activations"] + gradients + max(components["logits"], backward, *extra_peaks)


def _online_phases(components: dict[str, int], gradients: int) -> dict[str, int]:
    """The phases of an online RL step (PPO, GRPO, RLOO): training, the no-grad rollout passes, generation."""
    return {
        "training": _training_phase(components, gradients),
        "rollout": components["rollout"],
        "generation": components["kv_cache"] + components["generation_buffers"],
    }


def _trainer_transients(step: _Step, gradients: int) -> Transients:
    """sft and reward: `batch_size` sequences (reward: chosen and rejected of each pair) through the model, in
    training mode, their loss over the whole `(tokens, V)` logits (sft) or a score per sequence (reward)."""
    s = step.settings
    length = s.sequence_length
    tokens = s.batch_size * length * (2 if s.stage == "reward" else 1)
    logits = activations.training_logits_bytes(s.stage, step.dims, tokens, step.act_bytes, length)
    components = step.training(tokens, logits, dropout=True, training_mode=True)
    return components, {"training": _training_phase(components, gradients)}


def _ppo_transients(step: _Step, gradients: int) -> Transients:
    """ppo: training on mini batches (eval-mode numerics: LoRA dropout makes no input copies; log-probs from head
    chunks), the rollout's no-grad forward passes in mini-batch chunks, and generation in `generation_batch_size`
    sequences."""
    s, dims, act_bytes = step.settings, step.dims, step.act_bytes
    length = s.sequence_length
    tokens = min(s.mini_batch_size, s.batch_size) * length
    logits = activations.training_logits_bytes("ppo", dims, tokens, act_bytes, length)
    components = step.training(tokens, logits, dropout=False, training_mode=False)
    generation_batch = min(s.generation_batch_size or s.batch_size, s.batch_size)
    rollout_dequantized = step.no_grad_dequantized()
    components["rollout"] = activations.rollout_bytes(
        dims, tokens, act_bytes, length, rollout_dequantized, s.quantization
    )
    components["kv_cache"] = activations.kv_cache_bytes(dims, generation_batch, length, act_bytes)
    components["generation_buffers"] = activations.generation_working_bytes(
        dims, generation_batch, s.query_length, act_bytes, rollout_dequantized, s.quantization
    )
    return components, _online_phases(components, gradients)


def _dpo_transients(step: _Step, gradients: int) -> Transients:
    """dpo (TRL 1.16's `DPOTrainer`): each step concatenates chosen and rejected, `2 x batch_size` sequences of
    `sequence_length` tokens, and runs them through the policy with gradients, then through the reference without
    (the adapter disabled, or the reference copy without LoRA; gradient checkpointing off for it) while the policy's
    activations wait for the backward pass. Both score every token with TRL's fused LM head (no `(tokens, V)`
    logits; the worst case: every token an answer token). Training mode, dropout off (`disable_dropout`, TRL's
    default: LoRA makes no dropped-out input copies)."""
    s, dims, act_bytes = step.settings, step.dims, step.act_bytes
    tokens = 2 * s.batch_size * s.sequence_length
    logits = activations.fused_head_bytes(dims, tokens, act_bytes, backward=True)
    components = step.training(tokens, logits, dropout=False, training_mode=True)
    components["reference_forward"] = activations.no_grad_forward_bytes(
        dims, tokens, act_bytes, step.no_grad_dequantized(), s.quantization, head_tokens=tokens
    )
    during_reference = activations.fused_head_saved_bytes(dims, tokens, act_bytes) + components["reference_forward"]
    return components, {"training": _training_phase(components, gradients, during_reference)}


def _group_transients(step: _Step, gradients: int) -> Transients:
    """grpo and rloo (TRL 1.16's `GRPOTrainer` / `RLOOTrainer`, one process), in three phases:

    - generation: `generation_batch_size` completions at once (TRL: `per_device_train_batch_size x
      steps_per_generation`, whole groups of `num_generations`), a KV cache of prompt + completion tokens;
    - rollout, no gradients: the reference log-probs (the adapter disabled, or the reference copy without LoRA; RLOO
      also takes the old log-probs this way), in chunks of `batch_size` sequences through TRL's fused LM head over
      the completion tokens, then the rewards, `reward_batch_size` texts at a time through the reward adapter on the
      same base (or the separate float32 `reward_model`). The reference pass is planned even at `beta` 0, when GRPO
      skips it: it is never larger than the training pass of the same sequences;
    - training: `batch_size` completions with their prompts through the policy with gradients (training mode, LoRA
      dropout on: TRL leaves dropout as it is), log-probs and entropy from the fused head over the completion tokens.
    """
    s, dims, act_bytes = step.settings, step.dims, step.act_bytes
    length = s.sequence_length
    tokens, scored = s.batch_size * length, s.batch_size * s.response_length
    logits = activations.fused_head_bytes(dims, scored, act_bytes, backward=True)
    components = step.training(tokens, logits, dropout=True, training_mode=True)
    generation_batch = s.group_generation_batch
    no_grad_dequantized = step.no_grad_dequantized()
    reference = activations.no_grad_forward_bytes(
        dims, tokens, act_bytes, no_grad_dequantized, s.quantization, head_tokens=scored
    )
    reward_tokens = min(s.reward_batch_size, generation_batch) * length
    if s.reward_model:
        reward_dims = _inventory(s.reward_model, "reward").dims
        reward = activations.no_grad_forward_bytes(reward_dims, reward_tokens, FLOAT32_BYTES, 0)
    else:
        reward = activations.no_grad_forward_bytes(dims, reward_tokens, act_bytes, no_grad_dequantized, s.quantization)
    components["rollout"] = max(reference, reward)
    components["kv_cache"] = activations.kv_cache_bytes(dims, generation_batch, length, act_bytes)
    components["generation_buffers"] = activations.generation_working_bytes(
        dims, generation_batch, s.query_length, act_bytes, no_grad_dequantized, s.quantization
    )
    return components, _online_phases(components, gradients)


STAGE_TRANSIENTS: dict[str, Callable[[_Step, int], Transients]] = {
    "sft": _trainer_transients,
    "reward": _trainer_transients,
    "ppo": _ppo_transients,
    "dpo": _dpo_transients,
    "grpo": _group_transients,
    "rloo": _group_transients,
}
"""Each stage's transient components and phases, given the step and the gradients' bytes."""


def largest_batch(settings: PlanSettings) -> int:
    """The largest `batch_size` whose plan fits `settings.gpu_memory_gb` (memory grows with the batch, so a binary
    search is exact); 0 when a batch of 1 does not fit. Where `batch_size` is a limit (not ppo), its search:
    `limit_settings`."""
    if "batch_size" in LIMITS[settings.stage]:
        return largest_fitting(
            lambda batch: estimate(limit_settings(settings, "batch_size", batch)).fits, MAX_BATCH_SEARCHED
        )
    return largest_fitting(
        lambda batch: estimate(dataclasses.replace(settings, batch_size=batch)).fits, MAX_BATCH_SEARCHED
    )


def largest_fitting(fits: Callable[[int], bool], bound: int) -> int:
    """The largest `n` in `[1, bound]` with `fits(n)`, for a `fits` that is true up to some `n` and false above it
    (memory never shrinks as a size grows): doubling, then bisection. 0 when `fits(1)` is false."""
    low, high = 0, 1
    while high <= bound and fits(high):
        low, high = high, high * 2
    high = min(high, bound + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


LIMITS: dict[str, tuple[str, ...]] = {
    "ppo": ("mini_batch_size", "generation_batch_size", "response_length"),
    "sft": ("batch_size", "sequence_length"),
    "reward": ("batch_size", "sequence_length"),
    "dpo": ("batch_size", "sequence_length"),
    "grpo": ("batch_size", "num_generations", "response_length"),
    "rloo": ("batch_size", "num_generations", "response_length"),
}
"""The limits `search_limits` reports, per stage: the sizes that bound that stage's memory."""
MAX_LENGTH_SEARCHED = 2**17
"""Upper end of a length search when the model's config gives no context length."""


def limit_settings(settings: PlanSettings, name: str, value: int) -> PlanSettings:
    """`settings` with the limit `name` (one of `LIMITS[settings.stage]`) set to `value`, the others as given.

    ppo: the effective mini batch (`min(mini_batch_size, batch_size)`) and generation batch (`generation_batch_size`,
    default `batch_size`, at most `batch_size`) are fixed first; a larger mini or generation batch raises the rollout
    `batch_size` with it (a step cannot generate or train on more sequences than it collects, and the rollout batch
    costs nothing besides). sft, reward and dpo: `sequence_length` sets the tokens per sequence (the plan counts
    prompt and answer alike).

    grpo and rloo keep the configured `steps_per_generation` (generation batch / batch) and prompts per generation
    (generation batch / num_generations): a `batch_size` of n generates n x steps_per_generation completions at once;
    `num_generations` n generates prompts x n completions at once, in batches of that over steps_per_generation
    (rounded up); in TRL the per-device batch counts completions, so a larger group means a larger batch.

    Raises:
        ValueError: a name that is not a limit of the stage.
    """
    if settings.stage == "ppo":
        batch = settings.batch_size
        base = dataclasses.replace(
            settings,
            mini_batch_size=min(settings.mini_batch_size, batch),
            generation_batch_size=min(settings.generation_batch_size or batch, batch),
        )
        if name == "mini_batch_size":
            return dataclasses.replace(base, mini_batch_size=value, batch_size=max(batch, value))
        if name == "generation_batch_size":
            return dataclasses.replace(base, generation_batch_size=value, batch_size=max(batch, value))
        if name == "response_length":
            return dataclasses.replace(base, response_length=value)
    elif settings.stage in GROUP_STAGES:
        generation = settings.group_generation_batch
        steps = max(1, generation // settings.batch_size)
        if name == "batch_size":
            return dataclasses.replace(settings, batch_size=value, generation_batch_size=value * steps)
        if name == "num_generations":
            generation = max(1, generation // settings.num_generations) * value
            return dataclasses.replace(
                settings, num_generations=value, generation_batch_size=generation, batch_size=-(generation // -steps)
            )
        if name == "response_length":
            return dataclasses.replace(settings, response_length=value)
    elif name == "batch_size":
        return dataclasses.replace(settings, batch_size=value)
    elif name == "sequence_length":
        return dataclasses.replace(settings, query_length=value, response_length=0)
    raise ValueError(f"{name!r} is not a limit of stage {settings.stage!r}: {', '.join(LIMITS[settings.stage])}.")


def limit_bound(settings: PlanSettings, name: str) -> int:
    """The upper end of the search for limit `name`: the model's context for lengths (less the prompt for ppo
    responses), when its config gives one; `MAX_BATCH_SEARCHED` for batches."""
    if name not in ("response_length", "sequence_length"):
        return MAX_BATCH_SEARCHED
    context = model_record(settings.model).context_length
    room = None if context is None else context - (settings.query_length if name == "response_length" else 0)
    return room if room is not None and room >= 1 else MAX_LENGTH_SEARCHED


def search_limits(settings: PlanSettings) -> tuple[dict[str, int], dict[str, int]]:
    """Each limit of `settings.stage` (`LIMITS`) searched exactly, with its bound: `(limits, bounds)`."""
    limits, bounds = {}, {}
    for name in LIMITS[settings.stage]:
        bounds[name] = limit_bound(settings, name)
        limits[name] = largest_fitting(
            lambda value, name=name: estimate(limit_settings(settings, name, value)).fits, bounds[name]
        )
    return limits, bounds


def lora_targets(inventory: ModelInventory, settings: PlanSettings) -> list[LinearLayer]:
    """The linear layers that get LoRA adapters (none when `lora_r` is 0).

    `all-linear` means every quantizable linear layer (peft leaves out the output layer); no targets means peft's
    default for the model type.

    Raises:
        ConfigError: a target the model lacks (the message lists its linear layers), or no default for its type.
    """
    if settings.lora_r == 0:
        return []
    names = settings.lora_target_modules
    if names in (["all-linear"], "all-linear"):
        return [layer for layer in inventory.linear_layers if layer.name in inventory.quantized_layers]
    if not names:
        record = model_record(settings.model)
        names = record.default_lora_targets
        if not names:
            raise ConfigError(
                f"no default LoRA targets for model type {record.model_type!r}: set lora_target_modules."
            )
    missing = sorted(set(names) - set(inventory.linear_names))
    if missing:
        raise ConfigError(
            f"LoRA target module(s) {', '.join(missing)} not found in {inventory.architecture}; "
            f"its linear layers are: {', '.join(inventory.linear_names)}."
        )
    return [layer for layer in inventory.linear_layers if layer.short_name in names]


def _trainable_shapes(
    inventory: ModelInventory, targets: list[LinearLayer], settings: PlanSettings
) -> dict[str, list]:
    if settings.lora_r > 0:
        lora = lora_shapes([(layer.in_features, layer.out_features) for layer in targets], settings.lora_r)
        return {"lora": lora, "full": []}
    return {"lora": [], "full": list(inventory.parameter_shapes)}


def _reward_adapter(settings: PlanSettings) -> bool:
    """Whether the reward is a second, frozen adapter on the policy's base: ppo's shared design, and grpo/rloo
    without a separate `reward_model`."""
    if settings.stage == "ppo":
        return settings.design == "shared"
    return settings.stage in GROUP_STAGES and not settings.reward_model


def _other_models_bytes(settings: PlanSettings, frozen_float_bytes: int, trained_float_bytes: int) -> int:
    """Bytes of the models besides the policy. PPO's shared design: none with LoRA (reference = adapter disabled,
    reward = a second adapter), else a frozen reference copy and a reward model. chatllama design: its reward model
    (frozen) and its critic (a trained copy of the reward model); chatllama has no reference model. dpo, grpo and
    rloo: a frozen reference copy without LoRA (TRL copies the model; GRPO only at `beta` > 0, planned anyway), and
    for grpo/rloo a separate `reward_model`, loaded in float32 and unquantized (`RewardScorer.from_pretrained`)."""
    stage = settings.stage
    if stage in ("sft", "reward"):
        return 0
    causal = _inventory(settings.model, "causal_lm")
    if stage != "ppo":
        total = 0
        if settings.lora_r == 0:
            total += weight_bytes(causal, settings.quantization, settings.double_quant, frozen_float_bytes).total
        if stage in GROUP_STAGES and settings.reward_model:
            total += weight_bytes(_inventory(settings.reward_model, "reward"), "none", False, FLOAT32_BYTES).total
        return total
    scorer = _inventory(settings.model, "reward")
    frozen_copies: list[ModelInventory] = []
    trained_copies: list[ModelInventory] = []
    if settings.design == "chatllama":
        frozen_copies, trained_copies = [scorer], [scorer]
    elif settings.lora_r == 0:
        frozen_copies = [causal, scorer]  # no adapter to disable: a reference copy and a reward model
    total = 0
    for inventory, float_bytes in [(m, frozen_float_bytes) for m in frozen_copies] + [
        (m, trained_float_bytes) for m in trained_copies
    ]:
        total += weight_bytes(inventory, settings.quantization, settings.double_quant, float_bytes).total
    return total


def _inventory(model: str, role: str) -> ModelInventory:
    return model_record(model).inventories["sequence_classification" if role == "reward" else "causal_lm"]
