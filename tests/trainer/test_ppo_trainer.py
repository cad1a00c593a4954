import shutil
import warnings

import pytest
import torch
from peft import LoraConfig
from transformers import AutoTokenizer, LogitsProcessorList

from stackrlhf import (
    AutoModelForCausalLMWithValueHead,
    LengthSampler,
    PPOConfig,
    PPOTrainer,
    create_reference_model,
    respond_to_batch,
)
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
from tests.trainer.rollout_ratio import SamplingLogprobs, max_log_ratio


@pytest.fixture
def model_without_pad_token(tiny_model_dir, tmp_path):
    """The tiny model's files, with a tokenizer that has no pad token (like GPT-2's)."""
    path = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    return str(path)


def test_seed_example_runs_with_only_the_import_changed(model_without_pad_token):
    path = model_without_pad_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(path)
    model_ref = create_reference_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    query_tensor = tokenizer.encode("Once upon a time", return_tensors="pt")

    with pytest.warns(UserWarning, match="pad"):
        ppo_trainer = PPOTrainer(PPOConfig(batch_size=1), model, model_ref, tokenizer)
    response_tensor = respond_to_batch(model, query_tensor)
    train_stats = ppo_trainer.step([query_tensor[0]], [response_tensor[0]], [torch.tensor(1.0)])

    assert tokenizer.pad_token == tokenizer.eos_token
    assert ppo_trainer.config.mini_batch_size == 1
    assert response_tensor.shape == (1, 20)
    for key in ("objective/kl", "ppo/loss/total", "ppo/policy/clipfrac", "ppo/val/var_explained", "time/ppo/total"):
        assert key in train_stats
    assert train_stats["ppo/mean_scores"] == pytest.approx(1.0)


def _trainer(batch_size=2, **model_kwargs):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))
    config = PPOConfig(batch_size=batch_size, mini_batch_size=1, ppo_epochs=1, learning_rate=1e-2)
    return PPOTrainer(config, model, None, tokenizer), tokenizer


def _rollout(tokenizer, texts=("Once upon a time", "Lily saw a ball")):
    queries = [tokenizer.encode(text, return_tensors="pt")[0] for text in texts]
    responses = [torch.tensor([300, 301, 302]), torch.tensor([303, 304])][: len(texts)]
    return queries, responses


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda q, r, s: (q[:1], r, s), "does not match number of examples"),
        (lambda q, r, s: (q, r, [torch.tensor([1.0, 2.0]), s[1]]), "Scores must be scalars"),
        (lambda q, r, s: (q, [torch.tensor([], dtype=torch.long), r[1]], s), "responses\\[0\\] is empty"),
        (lambda q, r, s: (q, r, [torch.tensor(float("nan")), s[1]]), "must be finite"),
        (lambda q, r, s: (q, r, [s[0], torch.tensor(float("inf"))]), "must be finite"),
    ],
)
def test_bad_batches_are_refused_before_the_weights_change(tiny_model_dir, mutate, message):
    trainer, tokenizer = _trainer()
    queries, responses = _rollout(tokenizer)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        trainer.step(*mutate(queries, responses, [torch.tensor(1.0), torch.tensor(-1.0)]))
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())


def test_step_changes_the_trainable_weights(tiny_model_dir):
    trainer, tokenizer = _trainer()
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    stats = trainer.step(*_rollout(tokenizer), [torch.tensor(1.0), torch.tensor(-1.0)])
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("v_head") for name in changed)
    assert any(name.startswith("pretrained_model") for name in changed)
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference equals the policy before the update


@pytest.mark.parametrize("quantization", [{"load_in_8bit": True}, {"load_in_4bit": True}])
def test_lora_policy_on_quantized_base_uses_the_disabled_adapter_as_reference(tiny_model_dir, quantization):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, tokenizer = _trainer(peft_config=lora, **quantization)
    assert trainer.is_peft_model and trainer.ref_model is None
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    queries, responses = _rollout(tokenizer)
    scores = [torch.tensor(1.0), torch.tensor(-1.0)]
    first = trainer.step(queries, responses, scores)
    second = trainer.step(queries, responses, scores)

    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # LoRA B starts at zero: policy == reference
    assert second["objective/kl"] != pytest.approx(0.0, abs=1e-7)  # after an update the policy has moved
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)
    with trainer.optional_peft_ctx():
        ref_logprobs, *_ = trainer.batched_forward_pass(
            trainer.model, queries, responses, trainer.prepare_model_inputs(queries, responses)
        )
    assert torch.allclose(ref_logprobs, torch.tensor(second["objective/ref_logprobs"]), atol=1e-4)


def test_generate_single_and_batched_with_left_padding(tiny_model_dir):
    trainer, tokenizer = _trainer()
    queries, _ = _rollout(tokenizer)
    greedy = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": tokenizer.pad_token_id}
    single = [trainer.generate(query, return_prompt=False, **greedy)[0] for query in queries]
    batched = trainer.generate(queries, batch_size=2, return_prompt=False, **greedy)
    assert tokenizer.padding_side == "right"  # restored after left-padded batch generation
    for alone, together in zip(single, batched, strict=True):
        assert torch.equal(alone, together)
    with_prompt = trainer.generate(queries, return_prompt=True, length_sampler=LengthSampler(2, 3), **greedy)
    assert all(len(out) == len(query) + 2 for out, query in zip(with_prompt, queries, strict=True))


def test_reference_response_of_a_peft_policy_comes_from_the_base(tiny_model_dir):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, tokenizer = _trainer(peft_config=lora)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # make the adapter matter
    query = tokenizer.encode("Once upon a time", return_tensors="pt")[0]
    greedy = {"do_sample": False, "max_new_tokens": 8, "pad_token_id": tokenizer.pad_token_id}
    response, ref_response = trainer.generate(query, generate_ref_response=True, **greedy)
    with trainer.model.pretrained_model.disable_adapter():
        base = trainer.model.generate(input_ids=query.unsqueeze(0), **greedy)
    assert torch.equal(ref_response, base)
    assert not torch.equal(response, ref_response)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rollouts_come_from_the_policy_the_step_scores(tiny_model_dir, mode):
    """Before any update the PPO ratio π_old / π_sampling is 1 at every sampled token, whatever mode the last
    mini-batch left the policy in (`train_minibatch` leaves it training: LoRA dropout on). 0.11.4 sampled with the
    dropout on, so its ratio was off by nats on some tokens."""
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, tokenizer = _trainer(batch_size=3, peft_config=lora)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))  # an adapter that matters
    queries, _ = _rollout(tokenizer)
    queries.append(tokenizer.encode("The dog", return_tensors="pt")[0])  # three lengths: left padding
    trainer.model.train(mode == "train")
    sampling = SamplingLogprobs()
    torch.manual_seed(0)
    responses = trainer.generate(
        queries, batch_size=3, return_prompt=False, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList([sampling]),
    )  # fmt: skip
    assert trainer.model.training == (mode == "train")  # generate restores the mode
    assert max_log_ratio(trainer, queries, responses, sampling) < 1e-4
    trainer.optimizer.param_groups[0]["lr"] = 0.0  # weights unchanged: every mini-batch's ratio π / π_old is 1
    stats = trainer.step(queries, responses, [torch.tensor(1.0), torch.tensor(0.0), torch.tensor(-1.0)])
    assert stats["ppo/policy/approxkl"] == pytest.approx(0.0, abs=1e-10)
    assert stats["ppo/policy/clipfrac"] == 0.0


def test_no_dataset_warns_only_while_batch_size_is_the_default():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))
    with pytest.warns(UserWarning, match="No dataset is provided"):
        PPOTrainer(PPOConfig(), model, None, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batch size the caller chose needs no reminder
        PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=2), model, None, tokenizer)
