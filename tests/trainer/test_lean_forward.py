"""The PPO step's lean forward passes: head-chunked log-probs, and activation checkpointing that really runs."""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoTokenizer

from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from stackrlhf.core import entropy_from_logits, logprobs_from_logits
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
from stackrlhf.trainer.lean_forward import token_logprobs_and_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_equal_the_whole_sequence_log_softmax(dtype):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(dtype)
    hidden = torch.randn(2, 9, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    weights = torch.randn(2, 9)

    logits = head(hidden).float()
    expected = logprobs_from_logits(logits, labels)
    (expected * weights).sum().backward()
    expected_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    logprobs, entropy = token_logprobs_and_entropy(hidden, labels, head, with_entropy=True, chunk_elements=4 * 50)
    (logprobs * weights).sum().backward()

    torch.testing.assert_close(logprobs, expected)
    torch.testing.assert_close(entropy, entropy_from_logits(logits).detach())
    assert not entropy.requires_grad
    # bfloat16 gradients summed chunk by chunk round differently from one matmul over the sequence
    tolerance = {"rtol": 2e-2, "atol": 2e-3} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(hidden.grad, expected_grads[0], **tolerance)
    torch.testing.assert_close(head.weight.grad, expected_grads[1], **tolerance)


def _run_step(gradient_checkpointing: bool):
    """One PPO step of a LoRA policy with dropout everywhere (model and LoRA); returns the stats, the trainable
    weights after it, and how many times the first block's MLP ran in each kind of forward pass."""
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "v_proj", "w1"]),
        attention_dropout=0.3,
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))
    config = PPOConfig(
        batch_size=2,
        mini_batch_size=1,
        ppo_epochs=2,
        learning_rate=1e-2,
        gradient_checkpointing=gradient_checkpointing,
    )
    trainer = PPOTrainer(config, model, None, tokenizer)
    mlp_calls = {"with_grad": 0, "without_grad": 0}

    def count(module, args, output):
        mlp_calls["with_grad" if torch.is_grad_enabled() else "without_grad"] += 1

    block = next(m for name, m in model.named_modules() if name.endswith("layers.0"))
    block.mlp.register_forward_hook(count)
    queries = [tokenizer.encode(text, return_tensors="pt")[0] for text in ("Once upon a time", "Lily saw a ball")]
    responses = [torch.tensor([300, 301, 302]), torch.tensor([303, 304])]
    stats = trainer.step(queries, responses, [torch.tensor(1.0), torch.tensor(-0.5)])
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return stats, weights, mlp_calls


def test_gradient_checkpointing_runs_in_the_training_forward_passes_without_changing_the_numbers():
    plain_stats, plain_weights, plain_calls = _run_step(gradient_checkpointing=False)
    stats, weights, calls = _run_step(gradient_checkpointing=True)

    # 2 epochs x 2 mini-batches of 1 = 4 training forward passes. A (reentrant) checkpoint runs the block without
    # gradients in the forward pass and again, with gradients, in the backward pass: 4 more runs in all.
    assert plain_calls["with_grad"] == 4
    assert calls["with_grad"] == 4
    assert calls["without_grad"] == plain_calls["without_grad"] + 4
    # Dropout stays off in the forward pass and its recomputation (0.11.4's eval-mode numerics).
    for key in ("ppo/loss/total", "ppo/policy/entropy", "objective/kl", "ppo/val/vpred"):
        assert stats[key] == pytest.approx(plain_stats[key], rel=1e-5, abs=1e-7), key
    for name, value in weights.items():
        torch.testing.assert_close(value, plain_weights[name], rtol=1e-5, atol=1e-7)


def test_logits_that_are_not_the_head_of_the_last_hidden_state_keep_the_whole_sequence_path():
    """A model that post-processes its logits (here: scaled by 2, as logit-scaling models do) is detected on the
    first forward pass; its log-probs then come from the real logits, as in 0.11.4."""
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))

    def scale_logits(module, args, kwargs, output):
        output.logits = output.logits * 2
        return output

    model.pretrained_model.register_forward_hook(scale_logits, with_kwargs=True)
    trainer = PPOTrainer(PPOConfig(batch_size=1, mini_batch_size=1), model, None, tokenizer)
    queries = [tokenizer.encode("Once upon a time", return_tensors="pt")[0]]
    responses = [torch.tensor([300, 301, 302])]
    inputs = trainer.prepare_model_inputs(queries, responses)
    with pytest.warns(UserWarning, match="whole-sequence logits"), torch.no_grad():
        logprobs, _, _, _ = trainer.batched_forward_pass(model, queries, responses, inputs)
        logits, _, _ = model(**inputs)
    torch.testing.assert_close(logprobs, logprobs_from_logits(logits[:, :-1], inputs["input_ids"][:, 1:]))
