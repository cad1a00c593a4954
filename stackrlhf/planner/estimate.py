"""The memory plan: bytes per component, the peak, and which cards it fits.

Memory is modelled in phases. Persistent tensors (weights, quantization constants, LoRA weights, value head,
optimizer states) live throughout. On top of them, one phase at a time:
    - `training`: activations kept for backward, logits buffers, gradients (freed by `zero_grad` after the step);
    - `rollout` (ppo): the no-grad forward passes for log π_old, log π_ref and the values, in mini-batch chunks;
    - `generation` (ppo): the KV cache and decoding buffers.
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
from stackrlhf.planner.inventory import LinearLayer, ModelInventory
from stackrlhf.planner.quantization import weight_bytes
from stackrlhf.planner.records import model_record
from stackrlhf.planner.settings import PlanSettings
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
            `response_length`; sft and reward: `batch_size` (sequences, or pairs, per step) and `sequence_length`.
        limit_bounds: the upper end of each search: the model's context for the lengths (when its config gives
            one), `MAX_BATCH_SEARCHED` for the batches. A limit equal to its bound means everything up to it fits.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, settings as a dict, verdict keys as strings."""
        values = dataclasses.asdict(self)
        values["verdicts"] = {f"{gb}GB": fits for gb, fits in self.verdicts.items()}
        return values


COMPONENT_HELP = {
    "quantized_weights": "int8 or packed 4-bit weights of the quantized linear layers",
    "quantization_constants": "8-bit row scales (SCB); 4-bit absmax, code tables, nested constants",
    "unquantized_weights": "embeddings, lm_head, norms, biases (and all weights when not quantized), buffers",
    "other_models": "separate copies: reward + critic (chatllama), or reference + reward (shared design without LoRA)",
    "lora_weights": "LoRA A and B matrices, float32 (plus the frozen reward adapter in the shared design)",
    "value_head": "value head (ppo) or score head (reward), float32",
    "gradients": "gradients of the trainable parameters",
    "optimizer_states": "optimizer states of the trainable parameters",
    "activations": "activations kept for the backward pass (with checkpointing: each block's input)",
    "block_backward": "one block's recomputed activations and gradients during its backward pass",
    "dequantized_weight": "the largest quantized weight, dequantized for one matmul (8bit backward, 4bit always)",
    "logits": "logits buffers of the loss and its backward pass (ppo: head chunks)",
    "rollout": "hidden states, block buffers and head chunks of the no-grad rollout forward passes (ppo)",
    "kv_cache": "keys and values during generation (ppo)",
    "generation_buffers": "prefill intermediates and per-step logits during generation (ppo)",
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
    policy = _inventory(settings.model, "reward" if settings.stage == "reward" else "causal_lm")
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
    head_shapes = [] if settings.stage == "sft" else [(1, dims.hidden), (1,)]
    components = {
        "quantized_weights": weights.quantized,
        "quantization_constants": weights.constants,
        "unquantized_weights": weights.unquantized,
        "other_models": _other_models_bytes(settings, frozen_float_bytes, float_bytes),
        "lora_weights": tensor_bytes(trainable["lora"], FLOAT32_BYTES),
        "value_head": tensor_bytes(head_shapes, FLOAT32_BYTES),
    }
    if settings.stage == "ppo" and settings.design == "shared" and settings.lora_r > 0:
        components["lora_weights"] *= 2  # the frozen reward adapter has the policy adapter's shapes
    trained = [(trainable["lora"], FLOAT32_BYTES), (trainable["full"], float_bytes), (head_shapes, FLOAT32_BYTES)]
    if settings.stage == "ppo" and settings.design == "chatllama":
        trained *= 2  # the critic is trained like the actor
    components["gradients"] = sum(tensor_bytes(shapes, size) for shapes, size in trained)
    components["optimizer_states"] = sum(
        optimizer_state_bytes(shapes, size, settings.optimizer) for shapes, size in trained
    )

    # The PPO step runs its forward passes in eval mode (0.11.4's numerics): LoRA dropout makes no input copies.
    lora_elements = activations.lora_elements_per_block(
        [layer.in_features for layer in targets], settings.lora_r, dims.layers, dropout=settings.stage != "ppo"
    )
    length = settings.sequence_length
    if settings.stage == "ppo":
        train_tokens = min(settings.mini_batch_size, settings.batch_size) * length
    else:
        train_tokens = settings.batch_size * length * (2 if settings.stage == "reward" else 1)
    dequantized = activations.dequantized_weight_bytes(dims, settings.quantization, act_bytes)
    components["activations"] = activations.training_activation_bytes(
        dims, train_tokens, act_bytes, settings.checkpointing, lora_elements
    )
    components["block_backward"] = activations.block_backward_bytes(
        dims, train_tokens, act_bytes, lora_elements, training_mode=settings.stage != "ppo"
    )
    components["dequantized_weight"] = dequantized
    components["logits"] = activations.training_logits_bytes(settings.stage, dims, train_tokens, act_bytes, length)
    # The loss's logits are freed (PPO: chunk by chunk) before the blocks' backward passes begin.
    backward_peak = max(components["logits"], components["block_backward"] + dequantized)
    phases = {"training": components["activations"] + backward_peak + components["gradients"]}
    if settings.stage == "ppo":
        generation_batch = min(settings.generation_batch_size or settings.batch_size, settings.batch_size)
        rollout_dequantized = dequantized if settings.quantization == "4bit" else 0  # int8 forward: no copy
        components["rollout"] = activations.rollout_bytes(
            dims, train_tokens, act_bytes, length, rollout_dequantized, settings.quantization
        )
        components["kv_cache"] = activations.kv_cache_bytes(dims, generation_batch, length, act_bytes)
        components["generation_buffers"] = activations.generation_working_bytes(
            dims, generation_batch, settings.query_length, act_bytes, rollout_dequantized, settings.quantization
        )
        phases["rollout"] = components["rollout"]
        phases["generation"] = components["kv_cache"] + components["generation_buffers"]
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
    )


def largest_batch(settings: PlanSettings) -> int:
    """The largest `batch_size` whose plan fits `settings.gpu_memory_gb` (memory grows with the batch, so a binary
    search is exact); 0 when a batch of 1 does not fit."""
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
}
"""The limits `search_limits` reports, per stage: the sizes that bound that stage's memory."""
MAX_LENGTH_SEARCHED = 2**17
"""Upper end of a length search when the model's config gives no context length."""


def limit_settings(settings: PlanSettings, name: str, value: int) -> PlanSettings:
    """`settings` with the limit `name` (one of `LIMITS[settings.stage]`) set to `value`, the others as given.

    ppo: the effective mini batch (`min(mini_batch_size, batch_size)`) and generation batch (`generation_batch_size`,
    default `batch_size`, at most `batch_size`) are fixed first; a larger mini or generation batch raises the rollout
    `batch_size` with it (a step cannot generate or train on more sequences than it collects, and the rollout batch
    costs nothing besides). sft and reward: `sequence_length` sets the tokens per sequence (the plan counts prompt and
    answer alike).

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


def _other_models_bytes(settings: PlanSettings, frozen_float_bytes: int, trained_float_bytes: int) -> int:
    """Bytes of the models besides the policy. Shared design: none with LoRA (reference = adapter disabled, reward =
    a second adapter), else a frozen reference copy and a reward model. chatllama design: its reward model (frozen)
    and its critic (a trained copy of the reward model); chatllama has no reference model."""
    if settings.stage != "ppo":
        return 0
    causal, scorer = _inventory(settings.model, "causal_lm"), _inventory(settings.model, "reward")
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
