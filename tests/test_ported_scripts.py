"""TRL 0.11.4's PPO example scripts, ported by changing `from trl` to `from stackrlhf`.

Each test is a short program of our own that drives stackrlhf the way one of the scripts drives `trl` (same calls in
the same order, same argument and field names, same parse path and loop shape) for one or two PPO steps on the
bundled tiny Llama and a few bundled prompts, on CPU. What the scripts take from the Hub is replaced by local
stand-ins (the tiny model for the policy, tiny sequence classifiers and a LoRA adapter for the reward models,
in-memory datasets with the Hub datasets' columns), and `device_map={"": 0}` by `{"": "cpu"}`.

Two changes come from transformers 5, not from stackrlhf: the text-classification pipeline no longer knows
`return_all_scores=True` (it is passed on to the tokenizer and ignored; `top_k=None` returns every label's score,
sorted by score, so the reward is looked up by label), and `from_pretrained` no longer takes `load_in_8bit`, so the
8-bit reward pipeline gets a `BitsAndBytesConfig` instead.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    Adafactor,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    HfArgumentParser,
    pipeline,
)

from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
from stackrlhf.core import LengthSampler
from stackrlhf.data import DataArguments, load_splits

CORE_STATS = (
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "ppo/mean_scores",
    "ppo/loss/policy",
    "ppo/loss/value",
    "ppo/loss/total",
    "ppo/policy/approxkl",
    "ppo/policy/clipfrac",
    "ppo/returns/mean",
    "ppo/val/vpred",
    "ppo/learning_rate",
    "time/ppo/total",
)


# ------------------------------------------------------------------------------------------------ local stand-ins


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run torch on one thread: the tiny model gains nothing from more, and on a shared 2-core machine spinning OpenMP
    workers make each small matmul up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def questions() -> list[dict[str, str]]:
    """Bundled HH-RLHF rows (question, chosen, rejected), the source of every stand-in dataset."""
    train, _ = load_splits(DataArguments(max_samples=40, eval_samples=4))
    return list(train)


def _classifier(tiny_model_dir: str, path: Path, num_labels: int, **config) -> str:
    """A sequence classifier on the tiny model (score head seeded, untrained), saved with its tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=num_labels, **config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sentiment_model(tiny_model_dir, tmp_path_factory) -> str:
    """Stands in for `lvwerra/distilbert-imdb`: two labels, NEGATIVE and POSITIVE."""
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    return _classifier(tiny_model_dir, tmp_path_factory.mktemp("sentiment"), 2, **labels)


@pytest.fixture(scope="module")
def stack_reward_model(tiny_model_dir, tmp_path_factory) -> str:
    """Stands in for StackLLaMA's reward model: one label, the reward."""
    return _classifier(tiny_model_dir, tmp_path_factory.mktemp("stack_rm"), 1)


@pytest.fixture(scope="module")
def hh_rm_adapter(tiny_model_dir, tmp_path_factory) -> str:
    """Stands in for `trl-lib/llama-7b-hh-rm-adapter`: a LoRA SEQ_CLS adapter with a two-label score head."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = get_peft_model(model, config)  # SEQ_CLS saves the score head with the adapter (modules_to_save)
    path = tmp_path_factory.mktemp("rm_adapter")
    model.save_pretrained(path)
    return str(path)


def collator(data: list[dict]) -> dict[str, list]:
    """The scripts' collator: a dict of lists."""
    return {key: [d[key] for d in data] for key in data[0]}


def record_logs(monkeypatch, ppo_trainer: PPOTrainer) -> list[dict]:
    """What `log_stats` hands to the trackers, one dict per call."""
    logged = []
    monkeypatch.setattr(ppo_trainer.accelerator, "log", lambda values, step=None: logged.append(values))
    return logged


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that the optimizer updates."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_ppo_steps(all_stats: list[dict], logged: list[dict], all_rewards: list[list[torch.Tensor]]) -> None:
    """Every step returned finite stats with the core keys, and `log_stats` logged them with the rewards."""
    assert len(logged) == len(all_stats)
    for stats, logs, rewards in zip(all_stats, logged, all_rewards, strict=True):
        assert set(CORE_STATS) <= set(stats)
        for key, value in stats.items():
            assert np.all(np.isfinite(np.asarray(value, dtype=np.float64))), key
        assert logs["ppo/loss/total"] == stats["ppo/loss/total"]
        assert logs["env/reward_mean"] == pytest.approx(torch.stack(rewards).float().mean().item(), rel=1e-5)
        assert math.isfinite(logs["env/reward_std"])


def assert_changed(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str = "") -> set[str]:
    """The trainable parameters that changed; the value head must be one of them."""
    after = dict(model.named_parameters())
    changed = {name for name, old in before.items() if not torch.equal(old, after[name])}
    assert {"v_head.summary.weight", "v_head.summary.bias"} <= changed
    assert any(name.startswith(prefix) and not name.startswith("v_head") for name in changed)
    return changed


# --------------------------------------------------------------------------------------------- examples/scripts/ppo.py


@dataclass
class PpoScriptArguments:
    """The options of `examples/scripts/ppo.py` besides `PPOConfig`'s (same names and defaults)."""

    use_seq2seq: bool = field(default=False, metadata={"help": "Train an encoder-decoder policy."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to `from_pretrained`."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of the whole model."})
    lora_alpha: float | None = field(default=16, metadata={"help": "LoRA scaling."})
    lora_r: int | None = field(default=16, metadata={"help": "LoRA rank."})


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "use_peft"])
def test_ppo_script(monkeypatch, tiny_model_dir, sentiment_model, questions, use_peft):
    """Mirrors TRL 0.11.4 `examples/scripts/ppo.py`, with and without `--use_peft`: `HfArgumentParser((ScriptArguments,
    PPOConfig))` on the command line, `PPOConfig.model_name` / `query_dataset` / `reward_model` / `dataset_num_proc`
    / `seed`, a sentiment pipeline as reward, `generate(..., generate_ref_response=True)` and `log_stats` with extra
    `columns_to_log`."""
    reviews = [text for row in questions if len(text := row["question"] + " " + row["chosen"]) > 200][:8]
    imdb = Dataset.from_dict(  # stands in for stanfordnlp/imdb (columns text, label): 2 batches of 4 long reviews
        {"text": ["Too short a review.", *reviews], "label": [0, *[0, 1] * 4]}
    )
    datasets_on_disk = {"local/imdb": imdb}
    argv = [
        *("--model_name", str(tiny_model_dir), "--query_dataset", "local/imdb"),
        *("--reward_model", f"sentiment-analysis:{sentiment_model}", "--seed", "0", "--dataset_num_proc", "1"),
        *("--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1", "--learning_rate", "1e-3"),
        *(["--use_peft", "--lora_r", "4", "--lora_alpha", "8"] if use_peft else []),
    ]
    parser = HfArgumentParser((PpoScriptArguments, PPOConfig))
    args, ppo_config = parser.parse_args_into_dataclasses(argv)
    assert args.use_peft is use_peft and ppo_config.total_ppo_epochs == math.ceil(ppo_config.steps / 4)

    sent_kwargs = {"top_k": None, "function_to_apply": "none", "batch_size": 16}
    tokenizer = AutoTokenizer.from_pretrained(ppo_config.model_name)
    tokenizer.pad_token = tokenizer.eos_token

    def build_dataset(query_dataset, dataset_num_proc, input_min_text_length=2, input_max_text_length=8):
        ds = datasets_on_disk[query_dataset]
        ds = ds.rename_columns({"text": "review"})
        ds = ds.filter(lambda x: len(x["review"]) > 200, num_proc=dataset_num_proc)
        input_size = LengthSampler(input_min_text_length, input_max_text_length)

        def tokenize(sample):
            sample["input_ids"] = tokenizer.encode(sample["review"])[: input_size()]
            sample["query"] = tokenizer.decode(sample["input_ids"])
            return sample

        ds = ds.map(tokenize, num_proc=dataset_num_proc)
        ds.set_format(type="torch")
        return ds

    with PartialState().local_main_process_first():
        dataset = build_dataset(ppo_config.query_dataset, ppo_config.dataset_num_proc)
    assert len(dataset) == 8

    set_seed(ppo_config.seed)
    if not args.use_peft:
        ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(
            ppo_config.model_name, trust_remote_code=args.trust_remote_code
        )
        device_map = None
        peft_config = None
    else:
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, bias="none", task_type="CAUSAL_LM")
        ref_model = None
        device_map = {"": "cpu"}  # the script: {"": Accelerator().local_process_index}, a GPU
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        ppo_config.model_name, trust_remote_code=args.trust_remote_code, device_map=device_map, peft_config=peft_config
    )
    tokenizer = AutoTokenizer.from_pretrained(ppo_config.model_name)
    tokenizer.pad_token_id = tokenizer.eos_token_id

    ppo_trainer = PPOTrainer(ppo_config, model, ref_model, tokenizer, dataset=dataset, data_collator=collator)
    assert ppo_trainer.is_peft_model is use_peft and (ppo_trainer.ref_model is None) is use_peft

    device = ppo_trainer.accelerator.device
    if ppo_trainer.accelerator.num_processes == 1:
        device = 0 if torch.cuda.is_available() else "cpu"
    assert ppo_trainer.accelerator.state.deepspeed_plugin is None
    task, model_name = ppo_config.reward_model.split(":")
    sentiment_pipe = pipeline(task, model=model_name, device=device)
    if sentiment_pipe.tokenizer.pad_token_id is None:
        sentiment_pipe.tokenizer.pad_token_id = tokenizer.pad_token_id
    if sentiment_pipe.model.config.pad_token_id is None:
        sentiment_pipe.model.config.pad_token_id = tokenizer.pad_token_id

    def positive(outputs):
        return [torch.tensor({o["label"]: o["score"] for o in output}["POSITIVE"]) for output in outputs]

    generation_kwargs = {
        "min_length": -1,
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.eos_token_id,
        "max_new_tokens": 8,
    }
    logged = record_logs(monkeypatch, ppo_trainer)
    before = trainable(ppo_trainer.model)
    ref_before = {} if ref_model is None else {n: p.detach().clone() for n, p in ref_model.named_parameters()}
    all_stats, all_rewards = [], []
    for batch in ppo_trainer.dataloader:
        assert set(batch) == {"input_ids", "label", "query"}  # unused columns ("review") are dropped, as in 0.11.4
        query_tensors = batch["input_ids"]
        response_tensors, ref_response_tensors = ppo_trainer.generate(
            query_tensors, return_prompt=False, generate_ref_response=True, **generation_kwargs
        )
        batch["response"] = tokenizer.batch_decode(response_tensors)
        batch["ref_response"] = tokenizer.batch_decode(ref_response_tensors)

        texts = [q + r for q, r in zip(batch["query"], batch["response"], strict=True)]
        rewards = positive(sentiment_pipe(texts, **sent_kwargs))
        ref_texts = [q + r for q, r in zip(batch["query"], batch["ref_response"], strict=True)]
        batch["ref_rewards"] = positive(sentiment_pipe(ref_texts, **sent_kwargs))

        stats = ppo_trainer.step(query_tensors, response_tensors, rewards)
        ppo_trainer.log_stats(
            stats, batch, rewards, columns_to_log=["query", "response", "ref_response", "ref_rewards"]
        )
        all_stats.append(stats)
        all_rewards.append(rewards)
        assert len(response_tensors) == len(ref_response_tensors) == 4
        assert all(0 < len(r) <= 8 for r in response_tensors)

    assert len(all_stats) == 2
    assert_ppo_steps(all_stats, logged, all_rewards)
    changed = assert_changed(before, ppo_trainer.model, prefix="pretrained_model")
    if use_peft:
        assert all("lora_" in name for name in changed - {"v_head.summary.weight", "v_head.summary.bias"})
    else:
        assert all(torch.equal(p, ref_before[name]) for name, p in ref_model.named_parameters())


# ------------------------------------------------------------------------------- examples/scripts/ppo_multi_adapter.py


@dataclass
class MultiAdapterScriptArguments:
    """The options of `examples/scripts/ppo_multi_adapter.py` (same names; Hub defaults left out)."""

    model_name: str | None = field(default=None, metadata={"help": "Base model."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dialogue dataset (column `chosen`)."})
    rm_adapter: str | None = field(default=None, metadata={"help": "Reward LoRA adapter with its score head."})
    log_with: str | None = field(default=None, metadata={"help": "Tracker."})
    use_safetensors: bool | None = field(default=False, metadata={"help": "Passed to `from_pretrained`."})
    seed: int | None = field(default=0, metadata={"help": "Seed."})
    use_score_scaling: bool | None = field(default=False, metadata={"help": "PPOConfig.use_score_scaling."})
    use_score_norm: bool | None = field(default=False, metadata={"help": "PPOConfig.use_score_norm."})
    score_clip: float | None = field(default=None, metadata={"help": "PPOConfig.score_clip."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for `Dataset.map`."})


def test_ppo_multi_adapter_script(monkeypatch, tiny_model_dir, hh_rm_adapter, questions):
    """Mirrors TRL 0.11.4 `examples/scripts/ppo_multi_adapter.py`: a 4-bit (nf4) base with the policy's LoRA and a
    reward LoRA adapter loaded by `from_pretrained(..., quantization_config=, peft_config=, reward_adapter=)`, no
    reference model, `PPOConfig(optimize_cuda_cache=True, use_score_scaling=, use_score_norm=, score_clip=)` and
    rewards from `compute_reward_score`."""
    hh = Dataset.from_dict(  # stands in for Anthropic/hh-rlhf's train[:1%]: one batch of 8 dialogues
        {"chosen": [f"\n\nHuman: {row['question']}\n\nAssistant: {row['chosen']}" for row in questions[:8]]}
    )
    datasets_on_disk = {"local/hh-rlhf": hh}
    argv = [
        *("--model_name", str(tiny_model_dir), "--dataset_name", "local/hh-rlhf", "--rm_adapter", hh_rm_adapter),
        *("--use_safetensors", "True", "--use_score_scaling", "True", "--use_score_norm", "True"),
        *("--score_clip", "0.5"),
    ]
    script_args = HfArgumentParser(MultiAdapterScriptArguments).parse_args_into_dataclasses(argv)[0]

    def create_and_prepare_dataset(tokenizer, num_proc):
        dataset = datasets_on_disk[script_args.dataset_name]
        input_size = LengthSampler(6, 12)

        def tokenize(example):
            text_size = input_size()
            example["input_ids"] = tokenizer.encode(example["chosen"])[:text_size]
            example["query"] = tokenizer.decode(example["input_ids"])
            return example

        dataset = dataset.map(tokenize, batched=False, num_proc=num_proc)
        dataset.set_format("torch")
        return dataset

    lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    nf4_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        script_args.model_name,
        device_map={"": "cpu"},  # the script: {"": 0}, a GPU
        peft_config=lora_config,
        quantization_config=nf4_config,
        reward_adapter=script_args.rm_adapter,
        use_safetensors=script_args.use_safetensors,
    )
    assert model.is_loaded_in_4bit and model.supports_rm_adapter
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name)
    tokenizer.pad_token = tokenizer.eos_token
    with PartialState().local_main_process_first():
        dataset = create_and_prepare_dataset(tokenizer, script_args.dataset_num_proc)

    with pytest.warns(FutureWarning, match="optimize_cuda_cache"):
        config = PPOConfig(
            model_name=script_args.model_name,
            log_with=script_args.log_with,
            learning_rate=1e-5,
            batch_size=8,
            mini_batch_size=2,
            gradient_accumulation_steps=2,
            optimize_cuda_cache=True,
            seed=script_args.seed,
            use_score_scaling=script_args.use_score_scaling,
            use_score_norm=script_args.use_score_norm,
            score_clip=script_args.score_clip,
        )
    assert config.optimize_device_cache is True

    ppo_trainer = PPOTrainer(
        config, model, ref_model=None, tokenizer=tokenizer, dataset=dataset, data_collator=collator
    )
    generation_kwargs = {
        "top_k": 0.0,
        "top_p": 0.9,
        "do_sample": True,
        "pad_token_id": tokenizer.pad_token_id,
        "max_new_tokens": 16,
    }
    logged = record_logs(monkeypatch, ppo_trainer)
    before = trainable(ppo_trainer.model)
    reward_adapter_before = {n: p.detach().clone() for n, p in model.named_parameters() if "reward_adapter" in n}
    score_before = model.score.weight.detach().clone()
    all_stats, all_rewards = [], []
    for batch in ppo_trainer.dataloader:
        question_tensors = batch["input_ids"]
        response_tensors = ppo_trainer.generate(question_tensors, return_prompt=False, **generation_kwargs)
        batch["response"] = tokenizer.batch_decode(response_tensors, skip_special_tokens=True)

        texts = [q + r for q, r in zip(batch["query"], batch["response"], strict=True)]
        device = ppo_trainer.accelerator.device
        inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        raw_rewards = ppo_trainer.accelerator.unwrap_model(ppo_trainer.model).compute_reward_score(**inputs)
        rewards = [raw_rewards[i, -1, 1] for i in range(len(raw_rewards))]

        stats = ppo_trainer.step(question_tensors, response_tensors, rewards)
        ppo_trainer.log_stats(stats, batch, rewards)
        all_stats.append(stats)
        all_rewards.append(rewards)
        assert raw_rewards.shape == (8, inputs["input_ids"].shape[1], 2) and not raw_rewards.requires_grad

    assert len(all_stats) == 1
    assert_ppo_steps(all_stats, logged, all_rewards)
    assert abs(all_stats[0]["ppo/mean_scores"]) <= 0.5  # scaled, normalised, then clipped to score_clip
    changed = assert_changed(before, ppo_trainer.model, prefix="pretrained_model")
    assert all(".default." in name for name in changed - {"v_head.summary.weight", "v_head.summary.bias"})
    assert model.pretrained_model.active_adapter == "default"
    assert reward_adapter_before and all(
        torch.equal(p, reward_adapter_before[n]) for n, p in model.named_parameters() if "reward_adapter" in n
    )
    assert torch.equal(model.score.weight, score_before)


# ------------------------------------------------------- examples/research_projects/stack_llama/scripts/rl_training.py


@dataclass
class StackLlamaScriptArguments:
    """The options of StackLLaMA's `rl_training.py` that it reads (same names and defaults)."""

    model_name: str | None = field(default="", metadata={"help": "SFT model (base of the LoRA policy)."})
    tokenizer_name: str | None = field(default="", metadata={"help": "Tokenizer."})
    reward_model_name: str | None = field(default="", metadata={"help": "Reward model for the pipeline."})
    log_with: str | None = field(default=None, metadata={"help": "Tracker."})
    learning_rate: float | None = field(default=1.41e-5, metadata={"help": "PPOConfig.learning_rate."})
    output_max_length: int | None = field(default=128, metadata={"help": "Longest response."})
    mini_batch_size: int | None = field(default=1, metadata={"help": "PPOConfig.mini_batch_size."})
    batch_size: int | None = field(default=32, metadata={"help": "PPOConfig.batch_size."})
    ppo_epochs: int | None = field(default=4, metadata={"help": "PPOConfig.ppo_epochs."})
    gradient_accumulation_steps: int | None = field(default=4, metadata={"help": "PPOConfig's."})
    adafactor: bool | None = field(default=False, metadata={"help": "Train with Adafactor instead of Adam."})
    early_stopping: bool | None = field(default=False, metadata={"help": "PPOConfig.early_stopping."})
    target_kl: float | None = field(default=0.1, metadata={"help": "PPOConfig.target_kl."})
    reward_baseline: float | None = field(default=0.0, metadata={"help": "Subtracted from every reward."})
    save_freq: int | None = field(default=None, metadata={"help": "Save the policy every this many steps."})
    output_dir: str | None = field(default="runs/", metadata={"help": "Prefix of the checkpoint directories."})
    seed: int | None = field(default=0, metadata={"help": "PPOConfig.seed."})
    steps: int | None = field(default=20000, metadata={"help": "PPOConfig.steps (samples)."})
    init_kl_coef: float | None = field(default=0.2, metadata={"help": "PPOConfig.init_kl_coef."})
    adap_kl_ctrl: bool | None = field(default=True, metadata={"help": "PPOConfig.adap_kl_ctrl."})
    load_in_8bit: bool | None = field(default=True, metadata={"help": "Quantize the policy's base to 8 bits."})


def test_stack_llama_rl_training_script(monkeypatch, tmp_path, tiny_model_dir, stack_reward_model, questions):
    """Mirrors TRL 0.11.4 `examples/research_projects/stack_llama/scripts/rl_training.py`: an 8-bit base with a LoRA
    policy (`from_pretrained(..., load_in_8bit=True, device_map=, peft_config=)`), `PPOConfig(steps=,
    optimize_cuda_cache=True, early_stopping=, target_kl=, init_kl_coef=, adap_kl_ctrl=, ...)` and its
    `total_ppo_epochs`, `set_seed`, an Adafactor `optimizer=`, batched generation (6 prompts: 0.11.4's default
    `batch_size=4`, then 2) with a `LengthSampler` and `return_prompt=False`, an 8-bit reward pipeline, and
    `save_pretrained` every `save_freq` steps, reloadable as a value-head model."""
    output_dir = f"{tmp_path}/runs/"
    argv = [
        *("--model_name", str(tiny_model_dir), "--tokenizer_name", str(tiny_model_dir)),
        *("--reward_model_name", stack_reward_model, "--adafactor", "True", "--learning_rate", "1e-3"),
        *("--batch_size", "6", "--mini_batch_size", "3", "--gradient_accumulation_steps", "1", "--ppo_epochs", "1"),
        *("--steps", "12", "--save_freq", "1", "--output_dir", output_dir, "--reward_baseline", "0.25"),
        *("--early_stopping", "True", "--target_kl", "10.0"),
    ]
    script_args = HfArgumentParser(StackLlamaScriptArguments).parse_args_into_dataclasses(argv)[0]
    with pytest.warns(FutureWarning, match="optimize_cuda_cache"):
        config = PPOConfig(
            steps=script_args.steps,
            model_name=script_args.model_name,
            learning_rate=script_args.learning_rate,
            log_with=script_args.log_with,
            batch_size=script_args.batch_size,
            mini_batch_size=script_args.mini_batch_size,
            gradient_accumulation_steps=script_args.gradient_accumulation_steps,
            optimize_cuda_cache=True,
            early_stopping=script_args.early_stopping,
            target_kl=script_args.target_kl,
            ppo_epochs=script_args.ppo_epochs,
            seed=script_args.seed,
            init_kl_coef=script_args.init_kl_coef,
            adap_kl_ctrl=script_args.adap_kl_ctrl,
        )
    assert config.total_ppo_epochs == 2 and config.optimize_device_cache is True

    # stands in for lvwerra/stack-exchange-paired, data_dir="data/rl": two batches of questions
    train_dataset = Dataset.from_dict(
        {
            "question": [row["question"][:200] for row in questions[:12]],
            "response_j": [row["chosen"] for row in questions[:12]],
            "response_k": [row["rejected"] for row in questions[:12]],
        }
    )
    original_columns = train_dataset.column_names
    sent_kwargs = {"top_k": None, "function_to_apply": "none", "batch_size": 16, "truncation": True}
    tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer_name)
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token

    def build_dataset(tokenizer):
        def preprocess_function(examples):
            new_examples = {"query": [], "input_ids": []}
            for question in examples["question"]:
                query = "Question: " + question + "\n\nAnswer: "
                tokenized_question = tokenizer(query, truncation=True)
                new_examples["query"].append(query)
                new_examples["input_ids"].append(tokenized_question["input_ids"])
            return new_examples

        ds = train_dataset.map(preprocess_function, batched=True, remove_columns=original_columns)
        ds = ds.filter(lambda x: len(x["input_ids"]) < 512, batched=False)
        ds.set_format(type="torch")
        return ds

    dataset = build_dataset(tokenizer)
    set_seed(config.seed)
    current_device = "cpu"  # the script: Accelerator().local_process_index, a GPU

    lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        config.model_name,
        load_in_8bit=script_args.load_in_8bit,
        device_map={"": current_device},
        peft_config=lora_config,
    )
    assert model.is_loaded_in_8bit and model.is_peft_model
    optimizer = None
    if script_args.adafactor:
        optimizer = Adafactor(
            filter(lambda p: p.requires_grad, model.parameters()),
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            lr=config.learning_rate,
        )
    ppo_trainer = PPOTrainer(
        config,
        model,
        ref_model=None,
        tokenizer=tokenizer,
        dataset=dataset,
        data_collator=collator,
        optimizer=optimizer,
    )
    assert getattr(ppo_trainer.optimizer, "optimizer", ppo_trainer.optimizer) is optimizer  # Accelerate wraps it

    sentiment_pipe = pipeline(
        "sentiment-analysis",
        model=script_args.reward_model_name,
        device_map={"": current_device},
        model_kwargs={"quantization_config": BitsAndBytesConfig(load_in_8bit=script_args.load_in_8bit)},
        tokenizer=tokenizer,
        return_token_type_ids=False,
    )
    if sentiment_pipe.model.config.pad_token_id is None:
        sentiment_pipe.model.config.pad_token_id = sentiment_pipe.model.config.eos_token_id

    generation_kwargs = {
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": 100_000,  # never generated: every response is as long as the length sampler says
    }
    output_min_length, output_max_length = 2, 6  # the script: 32 and --output_max_length
    output_length_sampler = LengthSampler(output_min_length, output_max_length)

    logged = record_logs(monkeypatch, ppo_trainer)
    before = trainable(ppo_trainer.model)
    all_stats, all_rewards, saved = [], [], []
    for epoch, batch in enumerate(ppo_trainer.dataloader):
        if epoch >= config.total_ppo_epochs:
            break
        question_tensors = batch["input_ids"]
        response_tensors = ppo_trainer.generate(
            question_tensors,
            return_prompt=False,
            length_sampler=output_length_sampler,
            **generation_kwargs,
        )
        batch["response"] = tokenizer.batch_decode(response_tensors, skip_special_tokens=True)

        texts = [q + r for q, r in zip(batch["query"], batch["response"], strict=True)]
        pipe_outputs = sentiment_pipe(texts, **sent_kwargs)
        rewards = [torch.tensor(output[0]["score"] - script_args.reward_baseline) for output in pipe_outputs]

        stats = ppo_trainer.step(question_tensors, response_tensors, rewards)
        ppo_trainer.log_stats(stats, batch, rewards)
        all_stats.append(stats)
        all_rewards.append(rewards)
        assert all(output_min_length <= len(r) < output_max_length for r in response_tensors)

        if script_args.save_freq and epoch and epoch % script_args.save_freq == 0:
            ppo_trainer.save_pretrained(script_args.output_dir + f"step_{epoch}")
            saved.append(script_args.output_dir + f"step_{epoch}")

    assert len(all_stats) == config.total_ppo_epochs == 2
    assert_ppo_steps(all_stats, logged, all_rewards)
    changed = assert_changed(before, ppo_trainer.model, prefix="pretrained_model")
    assert all("lora_" in name for name in changed - {"v_head.summary.weight", "v_head.summary.bias"})

    assert saved == [f"{tmp_path}/runs/step_1"]
    checkpoint = Path(saved[0])
    files = {path.name for path in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "model.safetensors", "tokenizer.json"} <= files
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(checkpoint))
    assert reloaded.is_peft_model
    trained = dict(ppo_trainer.model.named_parameters())
    for name, param in reloaded.named_parameters():
        if "lora_" in name or name.startswith("v_head"):
            torch.testing.assert_close(param, trained[name], rtol=0, atol=0, msg=name)
