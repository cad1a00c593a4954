"""The configurations behind the golden fixtures of TRL 0.11.4's `PPOTrainer.step`, and how both sides build them.

Imported by `generate_ppo_fixtures.py` (run by a Python with trl==0.11.4) and by `test_ppo_golden.py` (run by
stackrlhf's environment), so this module imports only the standard library at module level; torch, transformers and
peft are imported inside the functions, and the PPO classes come in as an argument (`api`: the `trl` module or the
`stackrlhf` package).

A case is a plain dict:

- `name`, `description`;
- `config`: keyword arguments of `PPOConfig`;
- `steps`: the inputs of each consecutive `step` call: `queries` and `responses` (token id lists), `scores` (floats)
  and optionally `response_masks` (0/1 lists, one per response);
- `ref`: `"copy"` (pass `ref_model=None`: a frozen copy of the policy, or for a peft policy its base with the
  adapter disabled), `"initial"` (a second model loaded from the initial checkpoint) or `"perturbed"` (loaded from
  the `ref_perturbed` checkpoint, so the KL penalty is non-zero from the first step);
- optional `tokenizer` (`padding_side`; `pad_token: "eos"` pads with the EOS token), `model_kwargs` (extra
  `from_pretrained` arguments), `trainer_kwargs` (extra `PPOTrainer` arguments) and `lora` (`peft.LoraConfig`
  arguments: the policy gets a LoRA adapter whose starting weights are read from the `lora_init` fixture).

The comparison (`stat_mismatches`, `parameter_mismatches`, tolerances `RTOL`/`ATOL`) is here too, shared by the
test and by the generator's `--self-check`.
"""

from __future__ import annotations

from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "ppo"
INITIAL_DIR = FIXTURE_DIR / "initial"  # the policy (and value head) every case starts from, plus the tokenizer
REF_PERTURBED_DIR = FIXTURE_DIR / "ref_perturbed"  # the initial weights plus fixed noise: a reference that differs
LORA_INIT_FILE = FIXTURE_DIR / "lora_init" / "adapter_model.safetensors"  # starting LoRA weights (non-zero B)

# The tiny GPT-2 and its word-level vocabulary: <pad>=0, <s>=1, </s>=2, <unk>=3, then t4 ... t63.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_SIZE = 64
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
MODEL_CONFIG = {
    "vocab_size": VOCAB_SIZE,
    "n_positions": 64,
    "n_embd": 16,
    "n_layer": 2,
    "n_head": 2,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "summary_dropout_prob": 0.0,  # read by the value head (TRL's ValueHead looks for it on the model config)
    "initializer_range": 0.2,  # peakier next-token distributions than GPT-2's 0.02
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}
LORA_TARGET_MODULES = ["c_attn"]


def _lcg(seed: int):
    """Deterministic pseudo-random stream (Numerical Recipes LCG), identical in every Python."""
    state = seed & 0xFFFFFFFF
    while True:
        state = (1664525 * state + 1013904223) & 0xFFFFFFFF
        yield state


def make_step(
    seed: int,
    query_lens: list[int],
    response_lens: list[int],
    scores: list[float],
    *,
    eos_on: tuple[int, ...] = (),
    response_masks: list[list[int]] | None = None,
) -> dict:
    """Fixed inputs of one `step`: random ordinary tokens (4..63); responses listed in `eos_on` end with EOS."""
    assert len(query_lens) == len(response_lens) == len(scores)
    stream = _lcg(seed)

    def tokens(n: int) -> list[int]:
        return [4 + next(stream) % (VOCAB_SIZE - 4) for _ in range(n)]

    queries = [tokens(n) for n in query_lens]
    responses = [tokens(n) for n in response_lens]
    for i in eos_on:
        responses[i][-1] = EOS_ID
    step = {"queries": queries, "responses": responses, "scores": [float(s) for s in scores]}
    if response_masks is not None:
        assert [len(m) for m in response_masks] == response_lens
        step["response_masks"] = response_masks
    return step


# Inputs reused by several cases: four (or eight) sequences of different lengths, so padding always happens.
STEP_A = make_step(1, [5, 3, 7, 4], [6, 8, 3, 5], [1.5, -0.5, 0.25, 2.0], eos_on=(1,))
STEP_B = make_step(2, [4, 6, 2, 5], [7, 4, 6, 3], [-1.0, 0.75, 1.25, -0.25], eos_on=(0, 2))
STEP_C = make_step(3, [6, 3, 5, 4], [3, 6, 5, 8], [0.5, 2.5, -1.5, 1.0])
STEP_D = make_step(4, [3, 6, 4, 2, 5, 7, 3, 4], [5, 3, 6, 4, 7, 2, 8, 5], [1.0, -2.0, 0.5, 3.0, -0.5, 1.5, 0.0, 2.5])
STEP_E = make_step(
    5, [5, 2, 4, 6, 3, 4, 7, 2], [4, 6, 3, 5, 6, 4, 3, 7], [-1.5, 0.5, 2.0, -0.25, 1.0, 3.5, -2.0, 0.75]
)
STEP_3A = make_step(6, [4, 7, 2], [6, 3, 5], [2.0, -1.0, 0.5], eos_on=(1,))
STEP_3B = make_step(7, [3, 5, 6], [5, 7, 4], [-0.5, 1.5, 3.0])
# Wide-ranging scores for score scaling, normalisation and clipping.
STEP_S1 = make_step(8, [5, 3, 6, 4], [4, 6, 3, 5], [4.0, -3.0, 7.5, 0.5])
STEP_S2 = make_step(9, [4, 6, 3, 5], [5, 3, 6, 4], [10.0, 2.0, -6.0, 3.0])
STEP_S3 = make_step(10, [6, 4, 5, 3], [3, 5, 4, 6], [-2.0, 9.0, 1.0, -8.5])
# Response masks: interior zeros, a masked first token, and a masked last token (the score then lands on the last
# unmasked one).
STEP_MASKED = make_step(
    11,
    [5, 3, 6, 4],
    [6, 5, 4, 7],
    [1.0, -1.5, 2.5, 0.5],
    response_masks=[[1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0, 1, 1, 1]],
)

BASE_CONFIG = {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 2, "learning_rate": 1e-3, "seed": 0}


def _case(name: str, description: str, steps: list[dict], ref: str = "copy", **extra) -> dict:
    config = {**BASE_CONFIG, **extra.pop("config", {})}
    return {"name": name, "description": description, "config": config, "steps": steps, "ref": ref, **extra}


CASES: list[dict] = [
    _case(
        "defaults",
        "TRL's defaults (adaptive KL, kl penalty, target 6) at batch 4, mini-batch 2, 2 PPO epochs.",
        [STEP_A, STEP_B],
    ),
    _case(
        "seed_1234",
        "As `defaults` with another seed: other mini-batch permutations.",
        [STEP_A, STEP_B],
        config={"seed": 1234},
    ),
    _case(
        "grad_accum",
        "Batch 8, mini-batch 2, gradient_accumulation_steps 2 (an optimizer step every 2 mini-batches).",
        [STEP_D, STEP_E],
        config={"batch_size": 8, "gradient_accumulation_steps": 2},
    ),
    _case(
        "mini_batch_is_batch",
        "mini_batch_size == batch_size: one mini-batch per PPO epoch, 3 epochs.",
        [STEP_A, STEP_C],
        config={"mini_batch_size": 4, "ppo_epochs": 3},
    ),
    _case(
        "mini_batch_one",
        "Batch 3 with mini-batch 1 (also one-row forward passes).",
        [STEP_3A, STEP_3B],
        config={"batch_size": 3, "mini_batch_size": 1},
    ),
    _case(
        "kl_abs",
        "kl_penalty='abs' against a reference that differs; fixed KL coefficient.",
        [STEP_A, STEP_B],
        ref="perturbed",
        config={"kl_penalty": "abs", "adap_kl_ctrl": False, "init_kl_coef": 0.25},
    ),
    _case(
        "kl_mse",
        "kl_penalty='mse' against a reference that differs; fixed KL coefficient.",
        [STEP_A, STEP_B],
        ref="perturbed",
        config={"kl_penalty": "mse", "adap_kl_ctrl": False, "init_kl_coef": 0.3},
    ),
    _case(
        "kl_full",
        "kl_penalty='full' (KL over the whole vocabulary) against a reference that differs.",
        [STEP_A, STEP_B],
        ref="perturbed",
        config={"kl_penalty": "full", "adap_kl_ctrl": False, "init_kl_coef": 0.3},
    ),
    _case(
        "fixed_kl_3_steps",
        "adap_kl_ctrl=False over 3 steps: the coefficient stays at init_kl_coef.",
        [STEP_A, STEP_B, STEP_C],
        ref="perturbed",
        config={"adap_kl_ctrl": False, "init_kl_coef": 0.1},
    ),
    _case(
        "adaptive_kl_3_steps",
        "adap_kl_ctrl=True, small horizon, 3 steps: the KL controller's trajectory (the first update within the"
        " +-20% clip, the second clipped); kl_penalty='abs' so the KL is positive.",
        [STEP_A, STEP_B, STEP_C],
        ref="perturbed",
        config={"adap_kl_ctrl": True, "init_kl_coef": 0.1, "target": 2.0, "horizon": 40, "kl_penalty": "abs"},
    ),
    _case(
        "whiten_rewards_gamma_lam",
        "whiten_rewards=True with gamma 0.9 and lam 0.8.",
        [STEP_A, STEP_B],
        ref="perturbed",
        config={"whiten_rewards": True, "gamma": 0.9, "lam": 0.8},
    ),
    _case(
        "score_scaling",
        "use_score_scaling: scores divided by the running std (+eps) over 3 steps.",
        [STEP_S1, STEP_S2, STEP_S3],
        config={"use_score_scaling": True},
    ),
    _case(
        "score_scaling_norm_clip",
        "use_score_scaling + use_score_norm (running mean subtracted first) + score_clip 1.0, over 3 steps.",
        [STEP_S1, STEP_S2, STEP_S3],
        config={"use_score_scaling": True, "use_score_norm": True, "score_clip": 1.0},
    ),
    _case(
        "score_clip",
        "score_clip 2.5 alone (no scaling).",
        [STEP_S1, STEP_S2],
        config={"score_clip": 2.5},
    ),
    _case(
        "tight_clipping_vf_coef",
        "cliprange 0.05, cliprange_value 0.02, vf_coef 0.5, 4 epochs: the clipped objectives are active.",
        [STEP_A, STEP_B],
        config={"cliprange": 0.05, "cliprange_value": 0.02, "vf_coef": 0.5, "ppo_epochs": 4, "learning_rate": 5e-3},
    ),
    _case(
        "early_stopping",
        "early_stopping with a tiny target_kl: PPO epochs stop once the last mini-batch's policykl > 1.5 * target_kl.",
        [STEP_A, STEP_B],
        config={"early_stopping": True, "target_kl": 0.0005, "ppo_epochs": 4, "learning_rate": 5e-3},
    ),
    _case(
        "ratio_threshold",
        "ratio_threshold just above 1: mini-batches whose mean ratio exceeds it have their losses zeroed.",
        [STEP_A, STEP_B],
        config={"ratio_threshold": 1.01, "ppo_epochs": 4, "learning_rate": 5e-3},
    ),
    _case(
        "max_grad_norm",
        "max_grad_norm 0.05 (gradients clipped through accelerate) over 2 steps.",
        [STEP_A, STEP_B],
        config={"max_grad_norm": 0.05},
    ),
    _case(
        "response_masks",
        "response_masks given: interior zeros, a masked first token and a masked last token.",
        [STEP_MASKED, STEP_B],
        ref="perturbed",
        config={"init_kl_coef": 0.15},
    ),
    _case(
        "left_padding",
        "A left-padding tokenizer: the collator pads on the left and the masks are offset.",
        [STEP_A, STEP_B],
        ref="perturbed",
        tokenizer={"padding_side": "left"},
    ),
    _case(
        "pad_token_is_eos",
        "The tokenizer pads with its EOS token (some responses also contain EOS).",
        [STEP_A, STEP_B],
        tokenizer={"pad_token": "eos"},
    ),
    _case(
        "separate_ref_model",
        "An explicit ref_model loaded separately from the same initial checkpoint.",
        [STEP_A, STEP_B],
        ref="initial",
    ),
    _case(
        "num_shared_layers",
        "ref_model=None with num_shared_layers=1: the policy's embeddings and first block are frozen.",
        [STEP_A, STEP_B],
        trainer_kwargs={"num_shared_layers": 1},
    ),
    _case(
        "dropout_configured",
        "The model is loaded with dropout 0.3; TRL runs every forward pass in eval mode, so it has no effect.",
        [STEP_A, STEP_B],
        model_kwargs={"resid_pdrop": 0.3, "embd_pdrop": 0.3, "attn_pdrop": 0.3},
    ),
    _case(
        "lora_policy",
        "A LoRA (r=4 on c_attn) policy with ref_model=None: the reference is the base with the adapter disabled.",
        [STEP_A, STEP_B],
        lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": LORA_TARGET_MODULES, "bias": "none"},
        config={"learning_rate": 5e-3},
    ),
]
CASES_BY_NAME = {case["name"]: case for case in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"


# --------------------------------------------------------------------------------------------- building a case


def load_tokenizer(case: dict):
    """The fixture tokenizer, with the case's padding side and pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(INITIAL_DIR))
    options = case.get("tokenizer", {})
    if "padding_side" in options:
        tokenizer.padding_side = options["padding_side"]
    if options.get("pad_token") == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_lora_weights(model) -> None:
    """Copy the `lora_init` weights into every LoRA parameter of a value-head model (names without `.default`)."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(LORA_INIT_FILE))
    lora_params = {
        name.replace(".default", ""): param
        for name, param in model.pretrained_model.named_parameters()
        if "lora_" in name
    }
    assert sorted(lora_params) == sorted(weights), (sorted(lora_params), sorted(weights))
    with torch.no_grad():
        for name, param in lora_params.items():
            param.copy_(weights[name])


def build_models(case: dict, api, **extra_kwargs):
    """The policy and the `ref_model` argument, built with `api.AutoModelForCausalLMWithValueHead.from_pretrained`."""
    value_head_cls = api.AutoModelForCausalLMWithValueHead
    kwargs = {**case.get("model_kwargs", {}), **extra_kwargs}
    if "lora" in case:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(task_type="CAUSAL_LM", **case["lora"])
    model = value_head_cls.from_pretrained(str(INITIAL_DIR), **kwargs)
    if "lora" in case:
        set_lora_weights(model)
    ref_dir = {"copy": None, "initial": INITIAL_DIR, "perturbed": REF_PERTURBED_DIR}[case["ref"]]
    ref_model = None if ref_dir is None else value_head_cls.from_pretrained(str(ref_dir), **extra_kwargs)
    return model, ref_model


def build_trainer(case: dict, api, **extra_model_kwargs):
    """`(trainer, policy)`: `api.PPOTrainer(api.PPOConfig(**config), model, ref_model, tokenizer)`, no dataset."""
    model, ref_model = build_models(case, api, **extra_model_kwargs)
    tokenizer = load_tokenizer(case)
    config = api.PPOConfig(**case["config"])
    trainer = api.PPOTrainer(config, model, ref_model, tokenizer, **case.get("trainer_kwargs", {}))
    return trainer, model


def step_arguments(step: dict) -> tuple:
    """`(queries, responses, scores, response_masks)` tensors for `PPOTrainer.step`."""
    import torch

    queries = [torch.tensor(q, dtype=torch.long) for q in step["queries"]]
    responses = [torch.tensor(r, dtype=torch.long) for r in step["responses"]]
    scores = [torch.tensor(s, dtype=torch.float32) for s in step["scores"]]
    masks = step.get("response_masks")
    response_masks = None if masks is None else [torch.tensor(m, dtype=torch.long) for m in masks]
    return queries, responses, scores, response_masks


def trainable_parameters(model) -> dict:
    """Name -> tensor of every parameter that requires grad (value head and policy weights, or LoRA weights)."""
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


# --------------------------------------------------------------------------------------------- comparing

RTOL = 1e-4
ATOL = 1e-6
IGNORED_STAT_PREFIX = "time/"


def _as_float64(value):
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def decode_parameter(encoded: dict):
    """A fixture's `{"shape", "float32_base64"}` as a float64 numpy array."""
    import base64

    import numpy as np

    raw = np.frombuffer(base64.b64decode(encoded["float32_base64"]), dtype="<f4")
    return raw.reshape(encoded["shape"]).astype(np.float64)


def _mismatch(name: str, got, want, skip=()) -> str | None:
    import numpy as np

    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    keep = np.ones(want.size, dtype=bool)
    keep[list(skip)] = False
    got, want = got.reshape(-1)[keep], want.reshape(-1)[keep]
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
    if not bad.any():
        return None
    worst = int(np.argmax(np.where(bad, np.abs(got - want) / (ATOL + RTOL * np.abs(want)), -1.0)))
    return (
        f"{name}: {int(bad.sum())} of {bad.size} values differ; worst at [{worst}]: "
        f"{got[worst]!r}, expected {want[worst]!r}"
    )


def stat_mismatches(stats: dict, expected: dict, ignore_indices: dict | None = None) -> list[str]:
    """What differs between `step`'s stats and a fixture's (same keys, `time/*` aside; each value to RTOL/ATOL)."""
    ignore_indices = ignore_indices or {}
    stats = {key: value for key, value in stats.items() if not key.startswith(IGNORED_STAT_PREFIX)}
    problems = []
    if sorted(stats) != sorted(expected):
        problems.append(
            f"stat keys differ: missing {sorted(set(expected) - set(stats))}, "
            f"unexpected {sorted(set(stats) - set(expected))}"
        )
    for key in sorted(set(stats) & set(expected)):
        found = _mismatch(key, _as_float64(stats[key]), _as_float64(expected[key]), ignore_indices.get(key, ()))
        if found:
            problems.append(found)
    return problems


def parameter_mismatches(parameters: dict, expected: dict, ignore_indices: dict | None = None) -> list[str]:
    """What differs between the trainable parameters and a fixture's `final_parameters` (same names; each value
    to RTOL/ATOL except the flat `ignore_indices` of a parameter)."""
    ignore_indices = ignore_indices or {}
    problems = []
    if sorted(parameters) != sorted(expected):
        problems.append(
            f"trainable parameters differ: missing {sorted(set(expected) - set(parameters))}, "
            f"unexpected {sorted(set(parameters) - set(expected))}"
        )
    for name in sorted(set(parameters) & set(expected)):
        got, want = _as_float64(parameters[name]), decode_parameter(expected[name])
        found = _mismatch(name, got, want, ignore_indices.get(name, ()))
        if found:
            problems.append(found)
    return problems
