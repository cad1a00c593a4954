"""TRL 0.11.4's classic `PPOTrainer`, on today's transformers / peft / accelerate.

`step(queries, responses, scores)` runs one PPO update as in Ziegler et al. (2019), "Fine-Tuning Language Models from
Human Preferences", with the clipped objective of Schulman et al. (2017), "Proximal Policy Optimization Algorithms",
and generalized advantage estimation (GAE) of Schulman et al. (2016). Read `step` top to bottom; each stage is one
method below it, in the order it runs:

1. `_step_safety_checker`: validate the batch (lists of equal length = `batch_size`, scalar finite scores, non-empty
   responses).
2. score scaling / normalisation / clipping (Zheng et al. 2023, "Secrets of RLHF in LLMs Part I").
3. `batched_forward_pass` without gradients: log π_old(a_t|s_t), values V_old(s_t), and log π_ref(a_t|s_t) from the
   reference model (a peft policy's own base with its adapter disabled when `ref_model` is None).
4. `compute_rewards`: r_t = -β · KL_t at every response token, plus the score at the last one (Ziegler et al., eq. 2).
5. `compute_advantages`: δ_t = r_t + γ V(s_{t+1}) - V(s_t), Â_t = Σ_l (γλ)^l δ_{t+l}, returns R_t = Â_t + V(s_t);
   advantages are whitened.
6. `ppo_epochs` passes over shuffled mini-batches (`np.random.permutation(batch_size)` per epoch; gradient accumulation
   through accelerate): `loss` = clipped surrogate L^CLIP = E[max(-Â ρ, -Â clip(ρ, 1 ± ε))] with ρ = π/π_old, plus
   `vf_coef` × clipped value loss ½ E[max((V - R)², (clip(V, V_old ± ε_v) - R)²)]; mini-batches whose mean ratio
   exceeds `ratio_threshold` are skipped; `early_stopping` ends the epochs once the policy KL passes 1.5 × `target_kl`.
7. `record_step_stats`, then the KL controller update (adaptive: Ziegler et al., eq. 2) and the LR scheduler step.

The numbers equal TRL 0.11.4's for the same seed and inputs (tests/golden holds fixtures made with 0.11.4). Departures,
each a fix: `use_score_scaling` works (0.11.4 crashed on it); bad inputs (NaN/inf or non-scalar scores, empty
responses, length mismatches) raise a ValueError before any model runs; a `mini_batch_size` left at its default is
clamped to `batch_size` (in `PPOConfig`); a tokenizer without a pad token falls back to its EOS token; the reference
response of a peft policy (`generate_ref_response=True`) is really generated with the adapter disabled; `generate`
samples in eval mode, from the policy that the eval-mode forward passes score (0.11.4 sampled with dropout on). One
0.11.4 defect is kept on purpose, with a warning, because fixing it changes every number of a run: `max_grad_norm`
clips the gradients of the first optimizer step only.
"""

from __future__ import annotations

import inspect
import math
import time
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation

from stackrlhf.core import (
    WANDB_PADDING,
    AdaptiveKLController,
    FixedKLController,
    PPODecorators,
    RunningMoments,
    clip_by_value,
    convert_to_scalar,
    entropy_from_logits,
    flatten_dict,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    set_seed,
    stack_dicts,
    stats_to_np,
)
from stackrlhf.errors import ConfigError
from stackrlhf.models.modeling_value_head import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    create_reference_model,
)
from stackrlhf.trainer.deepspeed import fill_ppo_config, full_parameters, is_zero3, uses_deepspeed
from stackrlhf.trainer.lean_forward import checkpointed_eval_forward, eval_mode, token_logprobs_and_entropy
from stackrlhf.trainer.ppo_config import PPOConfig

SUPPORTED_ARCHITECTURES = (AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead)

TRAINER_STATE_KEYS = ("current_step", "kl_coef", "running_moments", "optimizer", "lr_scheduler")
RUNNING_MOMENTS_KEYS = ("mean", "std", "var", "count")

Tensors = list[torch.Tensor]
RAGGED = ("queries", "responses")  # lists of 1-D tensors of different lengths, indexed one by one


class PPOTrainer:
    """PPO for a causal or seq2seq LM with a value head, with TRL 0.11.4's constructor and methods.

    Args:
        config: the `PPOConfig`.
        model: the policy, an `AutoModelForCausalLMWithValueHead` or `AutoModelForSeq2SeqLMWithValueHead`.
        ref_model: the frozen reference for the KL penalty. None: a frozen copy of `model` (sharing its first
            `num_shared_layers` layers), or, for a peft policy, the policy's base with its adapter disabled.
        tokenizer: the policy's tokenizer; a missing pad token falls back to the EOS token.
        dataset: optional prompts; `dataloader` then yields shuffled batches of `config.batch_size`.
        optimizer: default `torch.optim.Adam(trainable parameters, lr=config.learning_rate)`.
        data_collator: collate function of `dataloader`.
        num_shared_layers: layers shared with the reference copy (only when `ref_model` is None).
        lr_scheduler: stepped once per `step`.
        training_data_collator: pads query+response ids for the forward passes; default
            `DataCollatorForLanguageModeling(tokenizer, mlm=False)`.
    """

    def __init__(
        self,
        config: PPOConfig | None = None,
        model: AutoModelForCausalLMWithValueHead | AutoModelForSeq2SeqLMWithValueHead | None = None,
        ref_model: AutoModelForCausalLMWithValueHead | AutoModelForSeq2SeqLMWithValueHead | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dataset: torch.utils.data.Dataset | datasets.Dataset | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        data_collator: Callable | None = None,
        num_shared_layers: int | None = None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        training_data_collator: Callable | None = None,
    ) -> None:
        if not isinstance(config, PPOConfig):
            raise ValueError(f"config must be a PPOConfig, got {type(config)}")
        self.config = config
        set_seed(config.seed)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ValueError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer)}")
        if not isinstance(model, SUPPORTED_ARCHITECTURES):
            raise ValueError(
                f"model must be one of {[cls.__name__ for cls in SUPPORTED_ARCHITECTURES]}, got {type(model)}"
            )
        if tokenizer.pad_token is None:
            warnings.warn(
                f"The tokenizer has no pad token: using its EOS token {tokenizer.eos_token!r} for padding.",
                UserWarning,
                stacklevel=2,
            )
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

        self.accelerator = Accelerator(
            log_with=config.log_with,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            project_config=ProjectConfiguration(**config.project_kwargs),
            **config.accelerator_kwargs,
        )
        config.world_size = self.accelerator.num_processes
        config.global_backward_batch_size = config.backward_batch_size * config.world_size
        config.global_batch_size = config.batch_size * config.world_size

        self.model = model
        # A one-shot iterator, as in TRL 0.11.4: `max_grad_norm` therefore clips the first optimizer step only.
        self.model_params = filter(lambda p: p.requires_grad, model.parameters())
        if config.max_grad_norm is not None:
            warnings.warn(
                "As in TRL 0.11.4, max_grad_norm clips the gradients of the first optimizer step only (its parameter "
                "iterator is used up there); kept so that runs reproduce 0.11.4's numbers.",
                UserWarning,
                stacklevel=2,
            )
        self.is_encoder_decoder = isinstance(model, AutoModelForSeq2SeqLMWithValueHead)
        self.is_peft_model = getattr(model, "is_peft_model", False)
        config.is_encoder_decoder = self.is_encoder_decoder
        config.is_peft_model = self.is_peft_model

        is_using_tensorboard = config.log_with == "tensorboard"
        self.accelerator.init_trackers(
            config.tracker_project_name,
            config=config.to_dict() if is_using_tensorboard else {"trl_ppo_trainer_config": config.to_dict()},
            init_kwargs=config.tracker_kwargs,
        )

        if isinstance(ref_model, SUPPORTED_ARCHITECTURES):
            self.ref_model = ref_model
            if num_shared_layers is not None:
                warnings.warn("num_shared_layers is ignored when ref_model is provided.", UserWarning, stacklevel=2)
        elif ref_model is None and not self.is_peft_model:
            self.ref_model = create_reference_model(model, num_shared_layers=num_shared_layers)
        elif ref_model is None:
            self.ref_model = None  # the policy's own base model, with its adapter disabled
        else:
            raise ValueError(f"ref_model must be a value-head model or None, got {type(ref_model)}")
        self.optional_peft_ctx = model.pretrained_model.disable_adapter if self.is_peft_model else nullcontext

        if dataset is not None and not isinstance(dataset, (torch.utils.data.Dataset, datasets.Dataset)):
            raise ValueError("dataset must be a torch.utils.data.Dataset or datasets.Dataset")
        if dataset is None and config.batch_size == PPOConfig.batch_size:
            # 0.11.4 warned whenever no dataset came; only a batch size left at its default needs the reminder
            warnings.warn(
                "No dataset is provided. Make sure to set config.batch_size to the correct value before training.",
                UserWarning,
                stacklevel=2,
            )
        self.dataset = dataset
        self._signature_columns: list[str] | None = None
        self.dataloader = self.prepare_dataloader(dataset, data_collator) if dataset is not None else None

        self.data_collator = training_data_collator or DataCollatorForLanguageModeling(tokenizer, mlm=False)
        trainable = filter(lambda p: p.requires_grad, self.model.parameters())
        self.optimizer = optimizer or torch.optim.Adam(trainable, lr=config.learning_rate)
        if lr_scheduler is not None and not isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise ValueError("lr_scheduler must be a torch.optim.lr_scheduler.LRScheduler")
        self.lr_scheduler = lr_scheduler

        if config.adap_kl_ctrl:
            self.kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target, config.horizon)
        else:
            self.kl_ctl = FixedKLController(config.init_kl_coef)

        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.pretrained_model.enable_input_require_grads()

        self.is_deepspeed = uses_deepspeed(self.accelerator)
        if self.is_deepspeed:  # no dataloader tells accelerate the micro-batch: the trainer's values fill "auto"
            fill_ppo_config(self.accelerator, config, self.model)
        (self.model, self.optimizer, self.data_collator, self.dataloader, self.lr_scheduler) = (
            self.accelerator.prepare(
                self.model, self.optimizer, self.data_collator, self.dataloader, self.lr_scheduler
            )
        )
        self.is_zero3 = is_zero3(self.accelerator)
        if self.is_deepspeed and self.ref_model is not None:
            if not (self.ref_model.is_loaded_in_8bit or self.ref_model.is_loaded_in_4bit):  # those are placed already
                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)  # ZeRO-3: sharded, else stage 0
        elif self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)  # frozen: no DDP

        self.is_distributed = self.accelerator.num_processes > 1
        self.current_step = 0
        if config.push_to_hub_if_best_kwargs:
            if "repo_id" not in config.push_to_hub_if_best_kwargs:
                raise ValueError("push_to_hub_if_best_kwargs needs a repo_id to push the model to.")
            self.push_to_hub_kwargs = config.push_to_hub_if_best_kwargs
            self.compare_step = 0
            self.highest_reward = torch.tensor(-float("inf"))

        if getattr(self.accelerator.unwrap_model(self.model), "is_sequential_parallel", False):
            self.current_device = torch.device("cuda:0")  # naive pipeline parallelism: inputs go to the first GPU
        else:
            self.current_device = self.accelerator.device
        PPODecorators.optimize_device_cache = config.optimize_device_cache
        self.running = RunningMoments(self.accelerator)
        self._chunked_head: dict[int, bool] = {}  # per model, set by `_head_applies_in_chunks`

    # ------------------------------------------------------------------------------------------------ data
    def prepare_dataloader(
        self, dataset: torch.utils.data.Dataset | datasets.Dataset, data_collator: Callable | None = None
    ) -> torch.utils.data.DataLoader:
        """A shuffled DataLoader of `config.batch_size` prompts, dropping the last incomplete batch."""
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.config.batch_size, collate_fn=data_collator, shuffle=True, drop_last=True
        )

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = [*inspect.signature(self.model.forward).parameters, "label", "query", "response"]

    def _remove_unused_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        if not self.config.remove_unused_columns:
            return dataset
        self._set_signature_columns_if_needed()
        return dataset.remove_columns(sorted(set(dataset.column_names) - set(self._signature_columns)))

    # ------------------------------------------------------------------------------------------------ rollouts
    def generate(
        self,
        query_tensor: torch.Tensor | Tensors,
        length_sampler: Callable[[], int] | None = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        generate_ref_response: bool = False,
        **generation_kwargs,
    ) -> torch.Tensor | Tensors | tuple:
        """Sample responses from the policy (and, with `generate_ref_response`, from the reference).

        Args:
            query_tensor: one query of shape `(query_len,)`, or a list of them (generated in batches of
                `batch_size`, left-padded, with each output's padding and anything after its first EOS removed).
            length_sampler: called before each batch to set `max_new_tokens`.
            return_prompt: keep the query tokens at the start of each output (decoder-only models).
            generate_ref_response: also return the reference model's responses.
            generation_kwargs: passed to `model.generate`.

        Sampling runs in eval mode (each module's mode is restored after it): the PPO step scores the rollouts with
        eval-mode forward passes (log π_old, as 0.11.4), so they must come from that policy. 0.11.4 sampled in
        whatever mode the last mini-batch left (training: LoRA and other dropout on), so its rollouts came from a
        perturbed policy (LoRA dropout 0.05 on the offline demo's adapter: log-probs off from π_old's by up to
        3 nats on a token).

        Returns:
            A tensor `(1, len)` for a single query, or a list of 1-D tensors; a pair of them with
            `generate_ref_response`.
        """
        reference_mode = eval_mode(self.ref_model) if self.ref_model is not None else nullcontext()
        with eval_mode(self.model), reference_mode:  # sample from the policy that the forward passes score
            if isinstance(query_tensor, list):
                response = self._generate_batched(
                    self.model, query_tensor, length_sampler, batch_size, return_prompt, **generation_kwargs
                )
                if not generate_ref_response:
                    return response
                with self._reference_for_generation() as ref_model:
                    ref_response = self._generate_batched(
                        ref_model, query_tensor, length_sampler, batch_size, return_prompt, **generation_kwargs
                    )
                return response, ref_response

            if query_tensor.dim() != 1:
                raise ValueError("query_tensor must be a tensor of shape (`seq_len`) or a list of such tensors")
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = length_sampler()
            input_ids = query_tensor.unsqueeze(0)
            with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped_model:
                response = unwrapped_model.generate(input_ids=input_ids, **generation_kwargs)
            ref_response = None
            if generate_ref_response:
                with self._reference_for_generation() as ref_model:
                    with unwrap_model_for_generation(ref_model, self.accelerator) as unwrapped_model:
                        ref_response = unwrapped_model.generate(input_ids=input_ids, **generation_kwargs)
            if not return_prompt and not self.is_encoder_decoder:
                response = response[:, query_tensor.shape[0] :]
                ref_response = ref_response[:, query_tensor.shape[0] :] if ref_response is not None else None
            return (response, ref_response) if generate_ref_response else response

    @contextmanager
    def _reference_for_generation(self) -> Iterator[torch.nn.Module]:
        """The reference model: the peft policy with its adapter disabled (until the context exits), or `ref_model`."""
        if self.is_peft_model:
            with self.optional_peft_ctx():
                yield self.model
        else:
            yield self.ref_model

    def _generate_batched(
        self,
        model: torch.nn.Module,
        query_tensors: Tensors,
        length_sampler: Callable[[], int] | None = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        pad_to_multiple_of: int | None = None,
        remove_padding: bool = True,
        **generation_kwargs,
    ) -> Tensors:
        """Generate for a list of queries in left-padded batches; outputs lose their padding and post-EOS tokens."""
        outputs: Tensors = []
        padding_side = self.tokenizer.padding_side
        if not self.is_encoder_decoder:
            self.tokenizer.padding_side = "left"
        batch_size = min(len(query_tensors), batch_size)
        try:
            for start in range(0, len(query_tensors), batch_size):
                if length_sampler is not None:
                    generation_kwargs["max_new_tokens"] = length_sampler()
                batch = query_tensors[start : start + batch_size]
                padded = self.tokenizer.pad(
                    {"input_ids": batch, "attention_mask": [torch.ones_like(ids) for ids in batch]},
                    padding=True,
                    pad_to_multiple_of=pad_to_multiple_of,
                    return_tensors="pt",
                ).to(self.current_device)
                with unwrap_model_for_generation(model, self.accelerator) as unwrapped_model:
                    generations = unwrapped_model.generate(**padded, **generation_kwargs)
                for generation, mask in zip(generations, padded["attention_mask"], strict=True):
                    output = generation
                    if not self.is_encoder_decoder:
                        output = output[(1 - mask).sum() :]  # drop the left padding
                        if not return_prompt:
                            output = output[mask.sum() :]
                    if remove_padding and self.tokenizer.eos_token_id in output:
                        first_eos = torch.nonzero(output == self.tokenizer.eos_token_id)[0, 0].item()
                        output = output[: first_eos + 1]  # keep the EOS itself
                    outputs.append(output)
        finally:
            self.tokenizer.padding_side = padding_side
        return outputs

    # ------------------------------------------------------------------------------------------------ the PPO step
    @PPODecorators.empty_device_cache()
    def step(
        self,
        queries: Tensors,
        responses: Tensors,
        scores: Tensors,
        response_masks: Tensors | None = None,
    ) -> dict[str, typing.Any]:
        """Run one PPO update on a batch of rollouts.

        Args:
            queries: `batch_size` query token ids, each of shape `(query_len,)`.
            responses: `batch_size` response token ids, each of shape `(response_len,)`, non-empty.
            scores: `batch_size` scalar rewards (reward-model units), finite.
            response_masks: optional `(response_len,)` 0/1 masks excluding response tokens from the loss.

        Returns:
            The statistics of TRL 0.11.4 (`objective/kl`, `ppo/loss/total`, `ppo/policy/clipfrac`, ...,
            `time/ppo/*`), as scalars and numpy arrays.
        """
        bs = self.config.batch_size
        queries, responses, scores, response_masks = self._step_safety_checker(
            bs, queries, responses, scores, response_masks
        )
        scores = self._scale_scores(torch.tensor(scores, device=self.current_device))
        self._push_to_hub_if_best(scores)

        timing = {}
        t0 = t = time.time()
        model_inputs = self.prepare_model_inputs(queries, responses)
        if self.is_distributed:
            model_inputs = self._pad_across_processes(model_inputs)
        model_inputs_names = list(model_inputs)
        full_kl_penalty = self.config.kl_penalty == "full"

        # Rollout statistics under the current (old) policy and the reference: log π_old, V_old, log π_ref.
        with torch.no_grad():
            all_logprobs, logits_or_none, values, masks = self.batched_forward_pass(
                self.model,
                queries,
                responses,
                model_inputs,
                response_masks=response_masks,
                return_logits=full_kl_penalty,
            )
            with self.optional_peft_ctx():
                ref_logprobs, ref_logits_or_none, _, _ = self.batched_forward_pass(
                    self.model if self.is_peft_model else self.ref_model,
                    queries,
                    responses,
                    model_inputs,
                    return_logits=full_kl_penalty,
                )
        timing["time/ppo/forward_pass"] = time.time() - t

        # Per-token rewards with the KL penalty, then GAE advantages and returns.
        with torch.no_grad():
            t = time.time()
            if full_kl_penalty:
                rewards, non_score_reward, kls = self.compute_rewards(
                    scores,
                    logprobs_from_logits(logits_or_none, None, gather=False),
                    logprobs_from_logits(ref_logits_or_none, None, gather=False),
                    masks,
                )
            else:
                rewards, non_score_reward, kls = self.compute_rewards(scores, all_logprobs, ref_logprobs, masks)
            timing["time/ppo/compute_rewards"] = time.time() - t
            t = time.time()
            values, advantages, returns = self.compute_advantages(values, rewards, masks)
            timing["time/ppo/compute_advantages"] = time.time() - t

        batch = {
            "queries": queries,
            "responses": responses,
            "logprobs": all_logprobs.to(torch.float32),
            "values": values.to(torch.float32),
            "masks": masks,
            "advantages": advantages,
            "returns": returns,
            **model_inputs,
        }

        # PPO epochs: shuffled mini-batches, gradient accumulation over `gradient_accumulation_steps` of them.
        t = time.time()
        all_stats = []
        early_stop = False
        for _ in range(self.config.ppo_epochs):
            if early_stop:
                break
            batch_indices = np.random.permutation(bs)
            for backward_start in range(0, bs, self.config.backward_batch_size):
                backward_indices = batch_indices[backward_start : backward_start + self.config.backward_batch_size]
                for mini_start in range(0, self.config.backward_batch_size, self.config.mini_batch_size):
                    mini_indices = backward_indices[mini_start : mini_start + self.config.mini_batch_size]
                    mini_batch = {key: value[mini_indices] for key, value in batch.items() if key not in RAGGED}
                    mini_batch.update({key: [batch[key][i] for i in mini_indices] for key in RAGGED})
                    with self.accelerator.accumulate(self.model):
                        logprobs, entropy, vpreds, _ = self.batched_forward_pass(
                            self.model,
                            mini_batch["queries"],
                            mini_batch["responses"],
                            {key: mini_batch[key] for key in model_inputs_names},
                            return_entropy=True,
                        )
                        train_stats = self.train_minibatch(
                            mini_batch["logprobs"],
                            mini_batch["values"],
                            logprobs,
                            entropy,
                            vpreds,
                            mini_batch["masks"],
                            mini_batch["advantages"],
                            mini_batch["returns"],
                        )
                        all_stats.append(train_stats)
            if self.config.early_stopping:
                early_stop = self._early_stop(train_stats["policy/policykl"])
        timing["time/ppo/optimize_step"] = time.time() - t

        # Statistics, then the KL controller and the learning-rate schedule.
        t = time.time()
        train_stats = stack_dicts(all_stats)
        train_stats["policy/advantages"] = torch.nan_to_num(  # NaN -> -1, which wandb histograms accept (as 0.11.4)
            torch.flatten(train_stats["policy/advantages"]).unsqueeze(0), WANDB_PADDING
        )
        train_stats["policy/ratio"] = torch.flatten(train_stats["policy/ratio"]).unsqueeze(0)
        stats = self.record_step_stats(
            scores=scores,
            logprobs=all_logprobs,
            ref_logprobs=ref_logprobs,
            non_score_reward=non_score_reward,
            train_stats=train_stats,
            kl_coef=self.kl_ctl.value,
            masks=masks,
            queries=queries,
            responses=responses,
            kls=kls,
        )
        if self.is_distributed:
            stats = self.gather_stats(stats)
        stats = stats_to_np(stats)
        timing["time/ppo/calc_stats"] = time.time() - t
        stats["ppo/learning_rate"] = self.optimizer.param_groups[0]["lr"]

        self.kl_ctl.update(stats["objective/kl"], self.config.batch_size * self.accelerator.num_processes)
        timing["time/ppo/total"] = time.time() - t0
        stats.update(timing)
        if self.config.log_with != "wandb":
            stats = convert_to_scalar(stats)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return stats

    def _step_safety_checker(
        self,
        batch_size: int,
        queries: Tensors,
        responses: Tensors,
        scores: Tensors,
        masks: Tensors | None = None,
    ) -> tuple[Tensors, Tensors, Tensors, Tensors | None]:
        """Check the batch and move it to the training device; scores become 0-d tensors.

        Raises:
            ValueError: a non-list or non-tensor input, lists whose length differs from `batch_size` or from each
                other, a score that is not a scalar or not finite, or an empty response.
        """
        named = {"queries": queries, "responses": responses, "scores": scores}
        if masks is not None:
            named["response_masks"] = masks
        for name, tensors in named.items():
            if not isinstance(tensors, list):
                raise ValueError(f"{name} must be a list of tensors - got {type(tensors)}")
            if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
                raise ValueError(f"{name} must be a non-empty list of tensors")
            if batch_size is not None and len(tensors) != batch_size:
                raise ValueError(
                    f"Batch size ({batch_size}) does not match number of examples - but got {len(tensors)} for: {name}"
                )
        lengths = {name: len(tensors) for name, tensors in named.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"queries, responses and scores must have the same length, got {lengths}")
        for i, response in enumerate(responses):
            if response.numel() == 0:
                raise ValueError(f"responses[{i}] is empty: every response needs at least one token")
            if masks is not None and masks[i].shape != response.shape:
                raise ValueError(
                    f"response_masks[{i}] has shape {tuple(masks[i].shape)}, its response {tuple(response.shape)}"
                )
        checked_scores = []
        for i, score in enumerate(scores):
            if score.numel() != 1 or score.dim() > 1:
                raise ValueError(f"Scores must be scalars - got shape {tuple(score.shape)} for scores[{i}]")
            if not torch.isfinite(score).all():
                raise ValueError(f"scores[{i}] is {score.item()}: scores must be finite")
            checked_scores.append(score.squeeze().to(self.current_device))
        return (
            [tensor.to(self.current_device) for tensor in queries],
            [tensor.to(self.current_device) for tensor in responses],
            checked_scores,
            [tensor.to(self.current_device) for tensor in masks] if masks is not None else None,
        )

    def _scale_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Score scaling (divide by the running std), normalisation (subtract the running mean first) and clipping.

        0.11.4 crashed with `use_score_scaling` (its running std is a float); this is what it intended.
        """
        if self.config.use_score_scaling:
            self.running.update(scores)
            as_scores = {"dtype": scores.dtype, "device": scores.device}
            scaling_factor = torch.tensor(self.running.std, **as_scores) + torch.finfo(scores.dtype).eps
            if self.config.use_score_norm:
                scores = (scores - torch.tensor(self.running.mean, **as_scores)) / scaling_factor
            else:
                scores = scores / scaling_factor
        if self.config.score_clip is not None:
            scores = torch.clip(scores.float(), -self.config.score_clip, self.config.score_clip).to(scores.dtype)
        return scores

    def _push_to_hub_if_best(self, scores: torch.Tensor) -> None:
        if not hasattr(self, "highest_reward"):
            return
        if self.compare_step % self.config.compare_steps == 0:
            mean_reward = scores.mean()
            if mean_reward > self.highest_reward:
                self.highest_reward = mean_reward
                self.push_to_hub(**self.push_to_hub_kwargs)
        self.compare_step += 1

    def prepare_model_inputs(self, queries: Tensors, responses: Tensors) -> dict[str, torch.Tensor]:
        """Pad query+response ids with the training collator: `input_ids`, `attention_mask` of shape (batch, len)
        (plus `decoder_input_ids` / `decoder_attention_mask` for seq2seq models)."""
        if self.is_encoder_decoder:
            inputs = self.data_collator([{"input_ids": q, "attention_mask": torch.ones_like(q)} for q in queries])
            decoder = self.data_collator([{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in responses])
            inputs["decoder_input_ids"] = decoder["input_ids"]
            inputs["decoder_attention_mask"] = decoder["attention_mask"]
        else:
            sequences = [torch.cat([q, r]) for q, r in zip(queries, responses, strict=True)]
            inputs = self.data_collator(
                [{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in sequences]
            )
        inputs = {key: value.to(self.current_device) for key, value in inputs.items() if key != "labels"}
        return inputs

    def _pad_across_processes(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pad every process's inputs to the same length so the DDP forward passes line up."""
        pad_first = self.tokenizer.padding_side == "left"
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "decoder_input_ids": self.tokenizer.pad_token_id}
        return {
            key: self.accelerator.pad_across_processes(
                value, dim=1, pad_index=pad_values.get(key, 0), pad_first=pad_first
            )
            for key, value in model_inputs.items()
        }

    @PPODecorators.empty_device_cache()
    def batched_forward_pass(
        self,
        model: torch.nn.Module,
        queries: Tensors,
        responses: Tensors,
        model_inputs: dict[str, torch.Tensor],
        return_logits: bool = False,
        response_masks: Tensors | None = None,
        return_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Forward passes in chunks of `mini_batch_size`, in eval mode (as 0.11.4: no dropout, even when training;
        activation checkpointing still runs where enabled, see `stackrlhf.trainer.lean_forward`).

        Unless `return_logits`, a causal LM's head is applied a few tokens at a time (`token_logprobs_and_entropy`):
        no `(batch, len, vocab)` logits or log-softmax exist at once, with or without gradients.

        Returns:
            logprobs `(batch, len-1)`: log π(token_{t+1} | tokens_≤t); then logits `(batch, len-1, vocab)` with
            `return_logits`, else the entropy `(batch, len-1)` (no gradient) with `return_entropy`, else None;
            values `(batch, len-1)`; masks `(batch, len-1)`: 1 on response tokens (times `response_masks`).
        """
        chunk = self.config.mini_batch_size
        all_logprobs, all_logits, all_entropies, all_masks, all_values = [], [], [], [], []
        unwrapped = self.accelerator.unwrap_model(model)
        for i in range(math.ceil(len(queries) / chunk)):
            rows = slice(i * chunk, (i + 1) * chunk)
            input_kwargs = {key: value[rows] for key, value in model_inputs.items()}
            if self.is_encoder_decoder:
                input_ids, attention_mask = input_kwargs["decoder_input_ids"], input_kwargs["decoder_attention_mask"]
            else:
                input_ids, attention_mask = input_kwargs["input_ids"], input_kwargs["attention_mask"]
            with checkpointed_eval_forward(unwrapped):
                if return_logits or not self._head_applies_in_chunks(model, input_kwargs):
                    logits, _, values = model(**input_kwargs, use_cache=False)  # no generation: no KV cache
                    logprobs = logprobs_from_logits(logits[:, :-1, :], input_ids[:, 1:])
                    entropy = entropy_from_logits(logits[:, :-1]).detach() if return_entropy else None
                else:
                    _, _, values, hidden = model(
                        **input_kwargs, use_cache=False, logits_to_keep=1, return_last_hidden_state=True
                    )
                    head = unwrapped.pretrained_model.get_output_embeddings()
                    logprobs, entropy = token_logprobs_and_entropy(
                        hidden[:, :-1], input_ids[:, 1:], head, with_entropy=return_entropy
                    )
                    logits = None
            masks = torch.zeros_like(attention_mask)
            masks[:, :-1] = attention_mask[:, 1:]
            for j, (query, response) in enumerate(zip(queries[rows], responses[rows], strict=True)):
                if self.is_encoder_decoder:
                    start, end = 1, attention_mask[j, :].sum() - 1  # the decoder starts after its start token
                else:
                    start = len(query) - 1  # log-probs start at the second query token
                    if attention_mask[j, 0] == 0:  # left padding
                        start += attention_mask[j, :].nonzero()[0]
                    end = start + len(response)
                masks[j, :start] = 0
                masks[j, end:] = 0
                if response_masks is not None:
                    masks[j, start:end] = masks[j, start:end] * response_masks[rows][j]
            if return_logits:
                all_logits.append(logits)
            elif return_entropy:
                all_entropies.append(entropy)
            del logits
            all_values.append(values)
            all_logprobs.append(logprobs)
            all_masks.append(masks)
        if return_logits:
            second = torch.cat(all_logits)[:, :-1]
        else:
            second = torch.cat(all_entropies) if return_entropy else None
        return torch.cat(all_logprobs), second, torch.cat(all_values)[:, :-1], torch.cat(all_masks)[:, :-1]

    def _head_applies_in_chunks(self, model: torch.nn.Module, model_inputs: dict[str, torch.Tensor]) -> bool:
        """Whether the causal LM's logits are exactly its output layer applied to its last hidden state (no logit
        scaling or soft-capping after the head, `logits_to_keep` honoured). Checked once, on the first inputs
        (without gradients): models that fail keep 0.11.4's whole-sequence logits, with a warning. Under ZeRO-3 the
        head's weight is partitioned outside the model's forward: whole-sequence logits too."""
        if self.is_encoder_decoder or self.is_zero3:
            return False
        unwrapped = self.accelerator.unwrap_model(model)
        if id(unwrapped) not in self._chunked_head:
            head = unwrapped.pretrained_model.get_output_embeddings()
            applies = False
            if isinstance(head, torch.nn.Module) and hasattr(head, "weight"):
                with torch.no_grad():
                    logits, _, _, hidden = model(
                        **model_inputs, use_cache=False, logits_to_keep=1, return_last_hidden_state=True
                    )
                    applies = logits.shape[1] == 1 and torch.allclose(
                        head(hidden[:, -1:]).float(), logits, rtol=1e-4, atol=1e-5
                    )
            self._chunked_head[id(unwrapped)] = applies
            if not applies:
                warnings.warn(
                    f"{type(unwrapped.pretrained_model).__name__}'s logits are not its output layer applied to its "
                    "last hidden state: the PPO forward passes keep whole-sequence logits (more memory).",
                    UserWarning,
                    stacklevel=3,
                )
        return self._chunked_head[id(unwrapped)]

    def compute_rewards(
        self,
        scores: torch.Tensor,
        logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        masks: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token reward r_t = -β·KL_t, with the score added at the last response token (Ziegler et al., eq. 2).

        Args:
            scores: `(batch,)`; logprobs, ref_logprobs: `(batch, len)` (or `(batch, len, vocab)` for the "full"
                penalty); masks: `(batch, len)`.

        Returns:
            rewards, non-score rewards (-β·KL_t) and KL_t, each `(batch, len)`.
        """
        rewards, non_score_rewards, kls = [], [], []
        for score, logprob, ref_logprob, mask in zip(scores, logprobs, ref_logprobs, masks, strict=True):
            kl = self._kl_penalty(logprob, ref_logprob)
            kls.append(kl)
            non_score_reward = -self.kl_ctl.value * kl
            non_score_rewards.append(non_score_reward)
            reward = non_score_reward.clone()
            reward[mask.nonzero()[-1]] += score
            rewards.append(reward)
        return torch.stack(rewards), torch.stack(non_score_rewards), torch.stack(kls)

    def _kl_penalty(self, logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
        """KL_t estimate: "kl" log π - log π_ref, "abs" its absolute value, "mse" half its square, "full" the exact
        KL(π || π_ref) over the vocabulary."""
        if self.config.kl_penalty == "kl":
            return logprob - ref_logprob
        if self.config.kl_penalty == "abs":
            return (logprob - ref_logprob).abs()
        if self.config.kl_penalty == "mse":
            return 0.5 * (logprob - ref_logprob).square()
        if self.config.kl_penalty == "full":
            return F.kl_div(ref_logprob, logprob, log_target=True, reduction="none").sum(-1)
        raise ValueError(f"kl_penalty {self.config.kl_penalty!r} is not one of kl, abs, mse, full")

    def compute_advantages(
        self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GAE (Schulman et al. 2016): δ_t = r_t + γ V_{t+1} - V_t, Â_t = δ_t + γλ Â_{t+1}; returns R_t = Â_t + V_t.

        Args:
            values, rewards, mask: `(batch, len)`.

        Returns:
            masked values, whitened advantages (detached) and returns, each `(batch, len)`.
        """
        gamma, lam = self.config.gamma, self.config.lam
        values = values * mask
        rewards = rewards * mask
        if self.config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        last_gae_lam = 0
        advantages_reversed = []
        gen_len = rewards.shape[-1]
        for t in reversed(range(gen_len)):
            next_values = values[:, t + 1] if t < gen_len - 1 else 0.0
            delta = rewards[:, t] + gamma * next_values - values[:, t]
            last_gae_lam = delta + gamma * lam * last_gae_lam
            advantages_reversed.append(last_gae_lam)
        advantages = torch.stack(advantages_reversed[::-1]).transpose(0, 1)
        returns = advantages + values
        advantages = masked_whiten(advantages, mask).detach()
        return values, advantages, returns

    @PPODecorators.empty_device_cache()
    def train_minibatch(
        self,
        old_logprobs: torch.Tensor,
        values: torch.Tensor,
        logprobs: torch.Tensor,
        entropy: torch.Tensor,
        vpreds: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on a mini-batch (accelerate skips it until the accumulation window is complete)."""
        self.model.train()
        loss_p, loss_v, train_stats = self.loss(
            old_logprobs, values, entropy, vpreds, logprobs, mask, advantages, returns
        )
        self.accelerator.backward(loss_p + loss_v)
        if self.config.max_grad_norm is not None and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.model_params, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return train_stats

    def loss(
        self,
        old_logprobs: torch.Tensor,
        values: torch.Tensor,
        entropy: torch.Tensor,
        vpreds: torch.Tensor,
        logprobs: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate policy loss and clipped value loss (Schulman et al. 2017, eq. 7 and 9).

        Args:
            old_logprobs, values: rollout log π_old and V_old, `(batch, len)`.
            entropy: the current policy's entropy per token, `(batch, len)` (a statistic: 0.11.4 passed the
                `(batch, len, vocab)` logits here and took their entropy; `batched_forward_pass` now returns it);
                vpreds, logprobs: current V and log π, `(batch, len)`.
            mask, advantages, returns: `(batch, len)`.

        Returns:
            policy loss, `vf_coef` × value loss (scalars), and the flattened statistics.
        """
        vpred_clipped = clip_by_value(
            vpreds, values - self.config.cliprange_value, values + self.config.cliprange_value
        )
        vf_losses1 = (vpreds - returns) ** 2
        vf_losses2 = (vpred_clipped - returns) ** 2
        vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
        vf_clipfrac = masked_mean(torch.gt(vf_losses2, vf_losses1).float(), mask)

        ratio = torch.exp(logprobs - old_logprobs)  # ρ_t = π(a_t|s_t) / π_old(a_t|s_t)
        pg_losses = -advantages * ratio
        pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - self.config.cliprange, 1.0 + self.config.cliprange)
        pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
        pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses).float(), mask)

        loss = pg_loss + self.config.vf_coef * vf_loss
        avg_ratio = masked_mean(ratio, mask).item()
        if avg_ratio > self.config.ratio_threshold:
            warnings.warn(
                f"The average ratio of batch ({avg_ratio:.2f}) exceeds threshold "
                f"{self.config.ratio_threshold:.2f}. Skipping batch.",
                stacklevel=2,
            )
            pg_loss, vf_loss, loss = pg_loss * 0.0, vf_loss * 0.0, loss * 0.0

        entropy = masked_mean(entropy, mask)
        approxkl = 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)
        policykl = masked_mean(old_logprobs - logprobs, mask)
        stats = {
            "loss": {"policy": pg_loss.detach(), "value": vf_loss.detach(), "total": loss.detach()},
            "policy": {
                "entropy": entropy.detach(),
                "approxkl": approxkl.detach(),
                "policykl": policykl.detach(),
                "clipfrac": pg_clipfrac.detach(),
                "advantages": advantages.detach(),
                "advantages_mean": masked_mean(advantages, mask).detach(),
                "ratio": ratio.detach(),
            },
            "returns": {"mean": masked_mean(returns, mask).detach(), "var": masked_var(returns, mask).detach()},
            "val": {
                "vpred": masked_mean(vpreds, mask).detach(),
                "error": masked_mean((vpreds - returns) ** 2, mask).detach(),
                "clipfrac": vf_clipfrac.detach(),
                "mean": masked_mean(values, mask).detach(),
                "var": masked_var(values, mask).detach(),
            },
        }
        return pg_loss, self.config.vf_coef * vf_loss, flatten_dict(stats)

    def _early_stop(self, policykl: torch.Tensor) -> bool:
        """Stop the PPO epochs (and drop pending gradients) once the policy KL exceeds 1.5 × `target_kl`; the KL is
        averaged over processes first."""
        if not self.config.early_stopping:
            return False
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.all_reduce(policykl, dist.ReduceOp.SUM)
            policykl /= self.accelerator.num_processes
        if policykl > 1.5 * self.config.target_kl:
            self.optimizer.zero_grad()
            return True
        return False

    # ------------------------------------------------------------------------------------------------ statistics
    def gather_stats(self, stats: dict[str, typing.Any]) -> dict[str, typing.Any]:
        """Average tensor statistics over processes."""
        import torch.distributed as dist

        dist.barrier()
        for key, value in stats.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.accelerator.device)  # reduce the tensor that is kept, not a moved copy
                dist.all_reduce(value, dist.ReduceOp.SUM)
                stats[key] = value / self.accelerator.num_processes
        return stats

    def record_step_stats(self, kl_coef: float, **data) -> dict[str, typing.Any]:
        """The step's statistics under 0.11.4's names (`objective/*`, `ppo/*`, `tokens/*`)."""
        mask = data.pop("masks")
        kl_list = (data.pop("kls") * mask).sum(axis=-1)
        mean_kl = kl_list.mean()
        mean_entropy = (-data["logprobs"] * mask).sum(axis=-1).mean()
        mean_non_score_reward = masked_mean(data["non_score_reward"], mask)
        if mean_kl.item() < -1.0:
            warnings.warn(
                f"KL divergence is starting to become negative: {mean_kl.item():.2f} - this might be a precursor for "
                "failed training. Sometimes this happens because the generation kwargs are not correctly set (e.g. "
                "min_length or a suppressed EOS forcing tokens). Please check them and your hyperparameters.",
                stacklevel=2,
            )
        stats = {
            "objective/kl": mean_kl,
            "objective/kl_dist": kl_list,
            "objective/logprobs": data["logprobs"],
            "objective/ref_logprobs": data["ref_logprobs"],
            "objective/kl_coef": kl_coef,
            "objective/entropy": mean_entropy,
            "ppo/mean_non_score_reward": mean_non_score_reward,
            "ppo/mean_scores": data["scores"].mean(),
            "ppo/std_scores": data["scores"].std(),
        }
        query_lens = torch.tensor([len(query) for query in data["queries"]], dtype=torch.float)
        response_lens = torch.tensor([len(response) for response in data["responses"]], dtype=torch.float)
        stats["tokens/queries_len_mean"] = torch.mean(query_lens).item()
        stats["tokens/queries_len_std"] = torch.std(query_lens).item()
        stats["tokens/queries_dist"] = query_lens.numpy()
        stats["tokens/responses_len_mean"] = torch.mean(response_lens).item()
        stats["tokens/responses_len_std"] = torch.std(response_lens).item()
        stats["tokens/responses_dist"] = response_lens.numpy()
        for key, value in data["train_stats"].items():
            stats[f"ppo/{key}"] = torch.mean(value, axis=0)
        stats["ppo/val/var_explained"] = 1 - stats["ppo/val/error"] / stats["ppo/returns/var"]
        return stats

    def log_stats(
        self,
        stats: dict[str, typing.Any],
        batch: dict[str, typing.Any],
        rewards: Tensors | torch.Tensor,
        columns_to_log: Iterable[str] = ("query", "response"),
    ) -> None:
        """Log `stats` plus `env/reward_{mean,std,dist}` to the trackers (`log_with`), and with wandb a table of the
        batch's `columns_to_log` next to each reward."""
        if not isinstance(rewards, torch.Tensor):
            rewards = torch.tensor(rewards).to(self.current_device)
        rewards = self.accelerator.gather(rewards).flatten()
        columns_to_log = list(columns_to_log)
        if self.config.log_with == "wandb":
            import wandb

            if any(column not in batch for column in columns_to_log):
                raise ValueError(f"Columns to log {columns_to_log} are not present in the batch {list(batch)}.")
            batch_list = [batch[column] for column in columns_to_log]
            if self.is_distributed:
                batch_list = [gather_object(column) for column in batch_list]
        if not self.accelerator.is_main_process:
            return
        logs = {}
        if "query" not in batch and "response" not in batch:
            warnings.warn(
                "The game logs will not be logged because the batch does not contain the keys 'query' and 'response'.",
                stacklevel=2,
            )
        elif self.config.log_with == "wandb":
            rows = [list(row) for row in zip(*batch_list, rewards.cpu().tolist(), strict=True)]
            logs["game_log"] = wandb.Table(columns=[*columns_to_log, "reward"], rows=rows)
        logs.update(stats)
        for key, value in logs.items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
                logs[key] = value.float()
        logs["env/reward_mean"] = torch.mean(rewards).cpu().numpy().item()
        logs["env/reward_std"] = torch.std(rewards).cpu().numpy().item()
        logs["env/reward_dist"] = rewards.cpu().numpy()
        if self.config.log_with == "tensorboard":
            self.current_step += 1
        self.accelerator.log(logs, step=self.current_step if self.config.log_with == "tensorboard" else None)

    # ------------------------------------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, typing.Any]:
        """The trainer's resumable state, for `load_state_dict` in a trainer built with the same settings.

        Keys: `current_step` (the tensorboard step counter), `kl_coef` (the KL controller's β), `running_moments`
        (`mean`, `std`, `var`, `count` of the scores seen, for `use_score_scaling`), `optimizer` (its state dict,
        with tensors), `lr_scheduler` (its state dict, or None without one). Everything but `optimizer` is
        JSON-safe (numbers may be numpy scalars). Not included: the model's weights and the random generators,
        which belong to the model and the process.

        Under DeepSpeed, `optimizer` is this process's part of the ZeRO optimizer: `base`, the state dict of the
        torch optimizer over its flat float32 partitions, and `fp32`, those partitions (the master weights); each
        process has its own.
        """
        running = self.running
        return {
            "current_step": self.current_step,
            "kl_coef": self.kl_ctl.value,
            "running_moments": {"mean": running.mean, "std": running.std, "var": running.var, "count": running.count},
            "optimizer": self._zero_state() if self.is_deepspeed else self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, typing.Any]) -> None:
        """Restore what `state_dict` returned (the scheduler's state only when both this trainer and `state` have
        one).

        Raises:
            ConfigError: `state` lacks a key of `state_dict` or has one it does not.
        """
        _check_keys("trainer state", state, TRAINER_STATE_KEYS)
        _check_keys("trainer state's running_moments", state["running_moments"], RUNNING_MOMENTS_KEYS)
        self.current_step = state["current_step"]
        self.kl_ctl.value = state["kl_coef"]
        for key, value in state["running_moments"].items():
            setattr(self.running, key, value)
        if self.is_deepspeed:
            self._load_zero_state(state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])

    # ------------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | Path) -> None:
        """Save the policy (adapter + value head for peft models) and the tokenizer to `save_directory`. Under
        ZeRO-3 with several processes, call it on every process: the partitioned weights are gathered first."""
        model = self.accelerator.unwrap_model(self.model)
        saved = [param for param in model.parameters() if param.requires_grad or not self.is_peft_model]
        with full_parameters(saved):
            if self.accelerator.is_main_process:
                self._save_pretrained(str(save_directory))

    def _save_pretrained(self, save_directory: str) -> None:
        model = self.accelerator.unwrap_model(self.model)
        # copies: under ZeRO-1/2 the weights are views of DeepSpeed's flat buffers, which torch.save would write whole
        state_dict = {key: value.detach().clone().cpu() for key, value in model.state_dict().items()}
        model.save_pretrained(save_directory, state_dict=state_dict)
        self.tokenizer.save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> None:
        """Push the policy and tokenizer to the Hugging Face Hub repository `repo_id`."""
        self.accelerator.unwrap_model(self.model).push_to_hub(repo_id, **kwargs)
        self.tokenizer.push_to_hub(repo_id, **kwargs)

    @contextmanager
    def _zero_optimizer(self) -> Iterator[tuple[typing.Any, Tensors]]:
        """DeepSpeed's ZeRO optimizer (under accelerate's wrapper) and its float32 partitions, one per group; within
        the block the torch optimizer inside it holds those partitions (ZeRO-3 hands them to it only to step)."""
        zero = self.optimizer.optimizer
        if not self.is_zero3:
            yield zero, zero.single_partition_of_fp32_groups
            return
        zero._set_fp32_optimizer_param_groups()
        try:
            yield zero, zero.fp32_partitioned_groups_flat
        finally:
            zero._clear_fp32_optimizer_param_groups()

    def _zero_state(self) -> dict[str, typing.Any]:
        with self._zero_optimizer() as (zero, partitions):
            return {
                "base": zero.optimizer.state_dict(),
                "fp32": [partition.detach().clone() for partition in partitions],
            }

    def _load_zero_state(self, state: dict[str, typing.Any]) -> None:
        """Restore `_zero_state`: the torch optimizer's state, the master weights, and from them the model's."""
        _check_keys("DeepSpeed optimizer state", state, ("base", "fp32"))
        with self._zero_optimizer() as (zero, partitions):
            if [saved.shape for saved in state["fp32"]] != [partition.shape for partition in partitions]:
                raise ConfigError(
                    "the checkpoint's DeepSpeed optimizer partitions do not fit this run's: resume with the same "
                    "accelerate config, number of processes and model settings."
                )
            zero.optimizer.load_state_dict(state["base"])
            for partition, saved in zip(partitions, state["fp32"], strict=True):
                partition.data.copy_(saved)
        if self.is_zero3:  # as DeepSpeed's own ZeRO-3 loading: the flat partitions, then the parameters' views
            for flat, partition, params in zip(
                zero.fp16_partitioned_groups_flat, partitions, zero.fp16_partitioned_groups, strict=True
            ):
                flat.data.copy_(partition.data)
                for param, value in zip(params, zero.unflatten(flat, params), strict=True):
                    param.data = value.data
        else:
            zero.update_lp_params()


def _check_keys(what: str, state: dict[str, typing.Any], expected: tuple[str, ...]) -> None:
    """Raise ConfigError naming the keys `state` lacks or has beyond `expected`."""
    missing = [key for key in expected if key not in state]
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"{what}: missing keys {missing}, unexpected keys {unexpected}; expected exactly {list(expected)} "
            "(from PPOTrainer.state_dict)."
        )
