"""The chatllama-style trainer on the tiny Llama with real SFT and reward LoRA adapters, in both modes."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl import ModelConfig

from stackrlhf.chatllama import ChatLlamaConfig, ChatLlamaTrainer, RewardModel, load_prompts
from stackrlhf.chatllama import trainer as trainer_module
from stackrlhf.chatllama.buffer import pad_memories, stack_memories
from stackrlhf.chatllama.losses import taken_token_log_probs
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


@pytest.fixture(scope="module")
def messy_checkpoints(tmp_path_factory):
    """A merged SFT model and a reward model with attention dropout 0.1 (OPT, chatllama's default family, has
    dropout 0.1), the SFT model shipping generation defaults that change the sampling distribution."""
    root = tmp_path_factory.mktemp("messy")
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=TINY_MODEL))
    torch.manual_seed(1)
    for name, task in (("sft", "causal_lm"), ("reward", "sequence_classification")):
        model = load_model(ModelConfig(model_name_or_path=TINY_MODEL), task=task)
        model.config.attention_dropout = 0.1
        if task == "causal_lm":
            model.generation_config.update(
                do_sample=True, top_k=3, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=50
            )
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {"sft": str(root / "sft"), "reward": str(root / "reward")}


def make_trainer(
    checkpoints,
    mode: str,
    *,
    batch_size: int = 1,
    prompts=PROMPTS,
    reward: dict | None = None,
    critic: dict | None = None,
    **actor,
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
            "critic_config": {"model_head_hidden_size": 16, "max_sequence_length": 512} | (critic or {}),
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


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_critic_starts_as_a_byte_copy_of_the_reward_model_with_its_own_weights(checkpoints, mode):
    trainer = make_trainer(checkpoints, mode, batch_size=1)
    critic, reward = trainer.actorcritic.critic, trainer.reward
    critic_state, reward_state = critic.state_dict(), reward.state_dict()
    assert list(critic_state) == list(reward_state) and any(k.startswith("head.") for k in critic_state)
    for name, tensor in critic_state.items():
        assert tensor.dtype == reward_state[name].dtype and torch.equal(tensor, reward_state[name]), name
        assert tensor.data_ptr() != reward_state[name].data_ptr(), name  # a copy, not shared storage

    reward_before = snapshot(reward)
    batch = trainer.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    trainer.critic_optimizer.zero_grad()
    critic(batch["input_ids"], batch["attention_mask"]).square().mean().backward()
    trainer.critic_optimizer.step()
    assert not torch.equal(critic.head[0].weight, reward.head[0].weight)  # the critic trained...
    assert not changed(reward_before, reward)  # ...and the reward model did not move


def test_a_named_critic_checkpoint_is_loaded_instead_of_the_copy(checkpoints):
    trainer = make_trainer(checkpoints, "faithful", critic={"model": TINY_MODEL})
    critic_backbone = trainer.actorcritic.critic.backbone.state_dict()
    reward_backbone = trainer.reward.backbone.state_dict()
    assert not all(torch.equal(critic_backbone[k], reward_backbone[k]) for k in critic_backbone)


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


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_learn_uses_dropout_in_faithful_mode_only_so_fixed_ratios_start_at_exactly_one(
    messy_checkpoints, mode, monkeypatch
):
    trainer = make_trainer(messy_checkpoints, mode, batch_size=2 if mode == "fixed" else 1)
    memories = trainer.make_experience(PROMPTS)
    calls = []
    compute_losses = trainer.compute_losses

    def recording(batch):
        calls.append(trainer.actorcritic.training)
        return compute_losses(batch)

    captured = {}

    def capture(name, loss):
        def wrapped(*args, **kwargs):
            captured.setdefault(name, args)
            return loss(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(trainer, "compute_losses", recording)
    for name in ("fixed_actor_loss", "clipped_value_loss"):
        monkeypatch.setattr(trainer_module, name, capture(name, getattr(trainer_module, name)))
    trainer.learn(memories)
    assert calls and all(training == (mode == "faithful") for training in calls)  # chatllama: actorcritic.train()
    if mode == "faithful":
        return

    log_probs, old_log_probs, *_ = captured["fixed_actor_loss"]
    values, old_values, _, _, mask = captured["clipped_value_loss"]
    valid = mask.bool()
    ratios = (log_probs - old_log_probs).exp()[valid]
    assert torch.equal(ratios, torch.ones_like(ratios))  # first epoch, unchanged weights: exactly 1
    assert torch.equal(values[valid], old_values[valid])

    fresh = make_trainer(messy_checkpoints, mode, batch_size=2)
    batch = pad_memories(fresh.make_experience(PROMPTS), fresh.tokenizer.pad_token_id)
    fresh.actorcritic.train()  # what faithful mode does: the checkpoints' dropout changes the log-probs
    logits, _ = fresh.actorcritic(batch.sequences, batch.sequences_mask, batch.action_len, batch.prompt_len)
    dropped = taken_token_log_probs(logits, batch.actions, fresh.config.actor.temperature)
    assert not torch.equal(dropped[batch.action_mask.bool()], batch.old_log_probs[batch.action_mask.bool()])


def test_fixed_mode_log_probs_are_those_of_the_sampling_distribution_whatever_the_checkpoint_defaults(
    messy_checkpoints,
):
    trainer = make_trainer(messy_checkpoints, "fixed", batch_size=2, max_tokens=16)
    actor = trainer.actorcritic.actor
    assert actor.checkpoint_generation_config.repetition_penalty == 1.5  # the checkpoint asks for processors
    faithful = actor.generation_settings(sample=False, max_new_tokens=16)
    assert (faithful.top_k, faithful.repetition_penalty, faithful.no_repeat_ngram_size) == (3, 1.5, 3)  # merged

    torch.manual_seed(7)
    memories = trainer.make_experience(PROMPTS)
    inputs = trainer.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    settings = actor.generation_settings(sample=True, max_new_tokens=16)
    settings.update(output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(7)  # the same draw again, with the scores generate sampled from
    with torch.no_grad():
        out = actor.model.generate(**inputs, generation_config=settings)
    prompt_len = inputs["input_ids"].shape[1]
    # the scores are the logits after every processor and warper generate applied: the sampling distribution
    sampling_log_probs = torch.log_softmax(torch.stack(out.scores, dim=1), dim=-1)  # [B, A, V]
    for row, memory in enumerate(memories):
        length = len(memory.actions)
        assert torch.equal(out.sequences[row, prompt_len : prompt_len + length], memory.actions)
        expected = sampling_log_probs[row, :length].gather(-1, memory.actions[:, None])[:, 0]
        torch.testing.assert_close(memory.old_log_probs, expected, atol=1e-5, rtol=0)
