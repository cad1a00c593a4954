"""The chatllama-style trainer on the tiny Llama with real SFT and reward LoRA adapters, in both modes."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl import ModelConfig

from stackrlhf.chatllama import ChatLlamaConfig, ChatLlamaTrainer, RewardModel, load_prompts
from stackrlhf.chatllama.buffer import pad_memories, stack_memories
from stackrlhf.data import DataArguments, prompts_within
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.models.loading import load_model, load_tokenizer
from stackrlhf.rewards.scorers import RewardScorer

PROMPTS = ["Question: Can you help me?\n\nAnswer: ", "Question: Why do cats purr when they are happy?\n\nAnswer: "]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An SFT LoRA adapter and a reward LoRA adapter (SEQ_CLS, `score` head saved), both with random LoRA weights."""
    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=TINY_MODEL))
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    torch.manual_seed(0)
    for name, task, model_task in (
        ("sft", "CAUSAL_LM", "causal_lm"),
        ("reward", "SEQ_CLS", "sequence_classification"),
    ):
        model = load_model(ModelConfig(model_name_or_path=TINY_MODEL), task=model_task)
        get_peft_model(model, LoraConfig(task_type=task, **lora)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {"sft": str(root / "sft"), "reward": str(root / "reward")}


def make_trainer(
    checkpoints, mode: str, *, batch_size: int = 1, prompts=PROMPTS, reward: dict | None = None, **actor
) -> ChatLlamaTrainer:
    config = ChatLlamaConfig.from_dict(
        {
            "trainer_config": {
                "mode": mode,
                "actor_lr": 1e-3,
                "critic_lr": 1e-3,
                "num_episodes": 1,
                "max_timesteps": 2,
                "update_timesteps": 2,
                "num_examples": 2,
                "batch_size": batch_size,
                "device": "cpu",
            },
            "actor_config": {
                "model": checkpoints["sft"],
                "max_sequence_length": 512,
                "max_tokens": 12,
                "min_tokens": 4,
            }
            | actor,
            "reward_config": {"model": checkpoints["reward"], "model_head_hidden_size": 16, "max_sequence_length": 512}
            | (reward or {}),
            "critic_config": {"model_head_hidden_size": 16, "max_sequence_length": 512},
        }
    )
    return ChatLlamaTrainer(config, prompts)


def snapshot(module: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad or not trainable_only}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = dict(module.named_parameters())
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def test_reward_and_critic_score_every_token_with_the_trained_reward(checkpoints):
    trainer = make_trainer(checkpoints, "fixed", batch_size=2)
    scorer = RewardScorer.from_pretrained(checkpoints["reward"], max_length=512)
    batch = scorer.tokenizer(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        expected = scorer.model(**batch).logits[0, 0]
        per_token = trainer.reward(batch["input_ids"], batch["attention_mask"])
        critic = trainer.actorcritic.critic(batch["input_ids"], batch["attention_mask"])
    assert per_token.shape == batch["input_ids"].shape
    torch.testing.assert_close(per_token[0, -1], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(critic, per_token)  # same checkpoint, same scores at the start
    critic_weight = trainer.actorcritic.critic.head[0].weight
    assert critic_weight.data_ptr() != trainer.reward.head[0].weight.data_ptr() and critic_weight.requires_grad
    assert not any(p.requires_grad for p in trainer.reward.parameters())  # fixed: frozen, scored under no_grad
    assert isinstance(trainer.reward, RewardModel) and trainer.reward.head[0].out_features == 16


@pytest.mark.parametrize(("mode", "batch_size", "peft"), [("faithful", 1, False), ("fixed", 2, True)])
def test_one_learn_changes_actor_and_critic_weights_only(checkpoints, mode, batch_size, peft):
    trainer = make_trainer(checkpoints, mode, batch_size=batch_size, peft_enable=peft)
    actor, critic = trainer.actorcritic.actor, trainer.actorcritic.critic
    actor_before, critic_before = snapshot(actor, trainable_only=True), snapshot(critic)
    reward_before = snapshot(trainer.reward)
    assert all("lora_" in name for name in actor_before) == peft

    memories = trainer.make_experience(PROMPTS)
    stats = trainer.learn(memories)

    assert len(stats.losses) == len(stats.value_losses) == 2 // batch_size
    assert all(torch.isfinite(torch.tensor(stats.losses + stats.value_losses)))
    assert changed(actor_before, actor) and changed(critic_before, critic) == set(critic_before)
    assert not changed(reward_before, trainer.reward)
    assert trainer.timer.take()["optimise"] > 0


def test_faithful_mode_keeps_chatllamas_quirks(checkpoints):
    trainer = make_trainer(checkpoints, "faithful")
    (memory,) = trainer.make_experience(PROMPTS[:1])
    actions, sequence = memory.actions, memory.sequence
    action_len, prompt_len = len(actions), len(sequence) - len(actions)
    with torch.no_grad():
        logits = trainer.actorcritic.actor.model(sequence[None], attention_mask=memory.sequence_mask[None]).logits[0]
        rewards = trainer.reward(sequence[None], memory.sequence_mask[None])[0, -action_len:]

    unshifted = torch.log(torch.softmax(logits[-action_len:], -1).max(-1).values + 1e-8)
    torch.testing.assert_close(memory.old_log_probs, unshifted)  # log of the max probability, unshifted slice
    taken = torch.log_softmax(logits[prompt_len - 1 : -1], -1).gather(-1, actions[:, None])[:, 0]
    assert not torch.allclose(memory.old_log_probs, taken, atol=1e-3)  # not the taken tokens' log-probabilities
    torch.testing.assert_close(memory.rewards, rewards)  # dense: the reward head at every action position

    greedy = logits[prompt_len - 1 : -1].argmax(-1)
    assert (greedy == actions).float().mean() > 0.5  # greedy decoding (no_repeat_ngram_size=3 may block some)
    assert all(p.requires_grad for p in trainer.reward.parameters())  # never frozen: the reward graph is built

    (other,) = trainer.make_experience(PROMPTS[1:])  # a longer prompt: another length
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        stack_memories([memory, other])  # chatllama's default collate cannot batch them


def test_fixed_mode_log_probs_are_the_taken_tokens_at_the_shifted_position_and_padding_is_masked(checkpoints):
    trainer = make_trainer(checkpoints, "fixed", batch_size=2)
    memories = trainer.make_experience(PROMPTS)  # prompts of different lengths: the rollout batch is padded
    eos_id = trainer.tokenizer.eos_token_id
    for memory, prompt in zip(memories, PROMPTS, strict=True):
        prompt_len = len(trainer.tokenizer(prompt)["input_ids"])
        actions = memory.actions
        assert len(memory.sequence) == prompt_len + len(actions) and memory.sequence_mask.all()
        assert (actions[:-1] != eos_id).all()  # cut after the first EOS
        with torch.no_grad():  # this row alone, no padding at all
            logits = trainer.actorcritic.actor.model(memory.sequence[None]).logits[0]
            rewards = trainer.reward(memory.sequence[None], memory.sequence_mask[None])[0, prompt_len:]
        temperature = trainer.config.actor.temperature
        log_probs = torch.log_softmax(logits[prompt_len - 1 : -1] / temperature, -1)
        taken = log_probs.gather(-1, actions[:, None])[:, 0]
        torch.testing.assert_close(memory.old_log_probs, taken, atol=1e-4, rtol=0)
        torch.testing.assert_close(memory.rewards, rewards, atol=1e-5, rtol=0)

    batch = pad_memories(memories, trainer.tokenizer.pad_token_id)
    lengths = [len(m.actions) for m in memories]
    assert batch.action_mask.sum(-1).tolist() == lengths
    with torch.no_grad():  # the padded re-forward reproduces the rollout: ratios 1, so the KL term is 0
        actor_loss, _ = trainer.compute_losses(batch)
    assert abs(actor_loss.kl.item()) < 1e-4
    assert actor_loss.entropy.item() > 0  # an entropy bonus: the mean token entropy


def test_train_runs_chatllamas_loop_on_the_bundled_data(checkpoints):
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=TINY_MODEL))
    prompts = prompts_within(load_prompts(DataArguments(max_samples=40, eval_samples=4)), tokenizer, 64)
    assert prompts and all(p.startswith("Question: ") and p.endswith("\n\nAnswer: ") for p in prompts)
    trainer = make_trainer(checkpoints, "fixed", batch_size=2, prompts=prompts)
    history = trainer.train()
    assert len(history) == 1 and len(history[0].losses) == 2  # 2 timesteps x 2 prompts, batches of 2
    assert isinstance(history[0].mean_reward, float)


def test_eight_bit_lora_actor_and_eight_bit_reward_train(checkpoints):
    trainer = make_trainer(
        checkpoints, "fixed", batch_size=2, reward={"load_in_8bit": True}, peft_enable=True, load_in_8bit=True
    )
    actor = trainer.actorcritic.actor
    before = snapshot(actor, trainable_only=True)
    assert before and all("lora_" in name for name in before)
    trainer.learn(trainer.make_experience(PROMPTS))
    assert changed(before, actor)
