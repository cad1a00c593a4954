"""stackrlhf rewards as TRL 1.16 reward functions, called as `GRPOTrainer` calls them, and in a real GRPO run."""

import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_callable_name, is_async_callable

from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
from stackrlhf.models.modeling_value_head import AutoModelForCausalLMWithValueHead
from stackrlhf.rewards import RewardError, VaderSentimentReward, as_trl_reward_func, build_reward

PROMPTS = ["The day was", "The day was"]
COMPLETIONS = [" wonderful and we loved it.", " awful and we were sad."]


def trl_call(reward_func, prompts, completions, **columns):
    """Exactly as TRL 1.16's `GRPOTrainer._calculate_rewards` calls a custom reward function."""
    reward_kwargs = dict(columns)
    reward_kwargs["trainer_state"] = SimpleNamespace(global_step=7)
    reward_kwargs["log_extra"] = lambda *args, **kwargs: None
    reward_kwargs["log_metric"] = lambda *args, **kwargs: None
    completion_ids = [[1, 2, 3] for _ in completions]
    return reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)


def test_standard_prompts_and_completions_are_joined_and_scored():
    vader = VaderSentimentReward()
    reward_func = as_trl_reward_func(vader, "vader")
    rewards = trl_call(reward_func, PROMPTS, COMPLETIONS, label=[1, 0])
    assert rewards == vader([p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    assert rewards[0] > 0.5 and rewards[1] < -0.5 and all(isinstance(r, float) for r in rewards)


def test_conversational_completions_score_the_last_assistant_message():
    seen = []

    def record(texts):
        seen.extend(texts)
        return [0.0] * len(texts)

    prompts = [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "How was the day?"}],
        [{"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "now?"}]}],
    ]
    completions = [
        [{"role": "assistant", "content": " Lovely."}],
        [{"role": "assistant", "content": " Fine."}, {"role": "tool", "content": "ignored"}],
    ]
    assert trl_call(as_trl_reward_func(record, "record"), prompts, completions) == [0.0, 0.0]
    assert seen == ["How was the day? Lovely.", "And now? Fine."]


def test_trl_logs_it_under_its_name():
    reward_func = as_trl_reward_func(VaderSentimentReward(), "sentiment")
    assert reward_func.__name__ == "sentiment" and get_callable_name(reward_func) == "sentiment"
    assert not is_async_callable(reward_func)


@pytest.mark.parametrize(
    ("scores", "message"),
    [([1.0], "returned 1 rewards for 2 texts at step 7"), ([1.0, math.nan], "returned nan for sample 1 of step 7")],
)
def test_a_bad_reward_is_refused_before_trl_sees_it(scores, message):
    reward_func = as_trl_reward_func(lambda texts: scores, "broken")
    with pytest.raises(RewardError, match=f"broken {message}"):
        trl_call(reward_func, PROMPTS, COMPLETIONS)


def test_the_reward_adapter_scores_through_it_and_leaves_the_policy_adapter_active(reward_dirs, tiny_model_dir):
    torch.manual_seed(0)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL, peft_config=lora, reward_adapter=str(reward_dirs["adapter"])
    ).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    reward = build_reward(policy, tokenizer, reward_adapter=str(reward_dirs["adapter"]), batch_size=2, max_length=64)
    rewards = trl_call(as_trl_reward_func(reward.fn, "reward_adapter"), PROMPTS, COMPLETIONS)
    assert rewards == pytest.approx(reward.fn([p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]))
    assert policy.pretrained_model.active_adapter == "default" and policy.training


def test_a_real_grpo_run_logs_the_reward(tmp_path):
    path = resolve_model_name_or_path(TINY_MODEL)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=as_trl_reward_func(VaderSentimentReward(), "vader"),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["Once upon a time", "The dog", "Lily was happy", "Tom saw"]}),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    trainer.train()
    logged = [record for record in trainer.state.log_history if "rewards/vader/mean" in record]
    assert len(logged) == 2
    assert all(-1.0 <= record["rewards/vader/mean"] <= 1.0 for record in logged)
    assert logged[0]["reward"] == pytest.approx(logged[0]["rewards/vader/mean"])
