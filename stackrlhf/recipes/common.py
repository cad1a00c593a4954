"""What every recipe shares: the `--dry_run` flag, parsing with readable errors, and printing a resolved config.

Each recipe module defines `make_parser(subparsers=None, prog=None)` and `main(*dataclasses)`; the launcher under
`recipes/` and the `stackrlhf <subcommand>` CLI both go through `run_recipe`, so they share one code path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset
from peft import LoraConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, TrlParser

from stackrlhf.data import DataArguments, load_splits
from stackrlhf.errors import ConfigError, StackRLHFError, one_line
from stackrlhf.models.loading import (
    ModelTask,
    build_peft_config,
    check_model_config,
    load_model,
    load_tokenizer,
    skeleton_model,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "stackrlhf_summary.json"


@dataclass
class RunArguments:
    """Options about the run itself rather than the model, data or training."""

    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Print the resolved configuration (defaults, then the --config file, then command-line flags) as "
            "YAML and exit without loading any model or data."
        },
    )


@dataclass
class TrainingSetup:
    """What a training recipe hands its TRL trainer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    peft_config: LoraConfig | None
    train_pairs: Dataset
    eval_pairs: Dataset


def prepare_training(
    data_args: DataArguments,
    model_args: ModelConfig,
    *,
    task: ModelTask = "causal_lm",
    trust_remote_code: bool = False,
) -> TrainingSetup:
    """Check the settings, then load the data, tokenizer and base model, cheapest first.

    The LoRA settings are checked on a meta-device skeleton before the data and the weights load, so a typo is
    reported at once, not after a multi-gigabyte checkpoint. Sequence-classification models get the tokenizer's pad id.
    """
    check_model_config(model_args, training=True)
    peft_config = build_peft_config(
        model_args, skeleton_model(model_args, task=task, trust_remote_code=trust_remote_code)
    )
    train_pairs, eval_pairs = load_splits(data_args)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, task=task, trust_remote_code=trust_remote_code)
    if task == "sequence_classification":
        model.config.pad_token_id = tokenizer.pad_token_id
    return TrainingSetup(model, tokenizer, peft_config, train_pairs, eval_pairs)


def prefer_reentrant_checkpointing(training_args: Any, model_args: ModelConfig) -> None:
    """With gradient checkpointing on a bitsandbytes-quantized base, checkpoint reentrantly unless the user chose
    otherwise: transformers 5's default (non-reentrant) keeps what bitsandbytes' 8-bit matmul stashes on its
    autograd context (the layer inputs) alive in every checkpointed layer.

    transformers 5.24 renamed `gradient_checkpointing(_kwargs)` to `activation_checkpointing(_kwargs)` (the old
    names stay as aliases resolved at parse time); both spellings are read and the new one is written.
    """
    new_names = hasattr(training_args, "activation_checkpointing_kwargs")
    prefix = "activation" if new_names else "gradient"
    if getattr(training_args, f"{prefix}_checkpointing") and (model_args.load_in_8bit or model_args.load_in_4bit):
        kwargs = dict(getattr(training_args, f"{prefix}_checkpointing_kwargs") or {})
        kwargs.setdefault("use_reentrant", True)
        setattr(training_args, f"{prefix}_checkpointing_kwargs", kwargs)


def add_parser(
    subparsers: Any | None,
    name: str,
    help_text: str,
    dataclass_types: Sequence[type],
    defaults: dict[str, Any],
    prog: str | None = None,
    help_overrides: dict[str, str] | None = None,
) -> TrlParser:
    """Build a recipe's parser, standalone or as `stackrlhf <name>`, with the recipe's own defaults.

    `defaults` overrides dataclass defaults (TRL's defaults target big GPUs; ours make a no-argument run work
    offline), and `--help` shows them; `help_overrides` rewords the help of options a recipe gives a new meaning.
    A `--config file.yaml` and command-line flags override the defaults in turn.
    """
    if subparsers is not None:
        parser = subparsers.add_parser(name, help=help_text, description=help_text, dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=help_text)
    unknown = set(defaults) - {action.dest for action in parser._actions}
    if unknown:
        raise ConfigError(f"recipe {name}: defaults for unknown options {sorted(unknown)}")
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if help_overrides and action.dest in help_overrides:
            action.help = help_overrides[action.dest]
    return parser


def parse_args(parser: TrlParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `argv` (default: `sys.argv[1:]`) and an optional `--config` YAML into the parser's dataclasses.

    Raises:
        ConfigError: an unreadable config file, an unknown key in it, or a value a dataclass rejects.
    """
    try:
        return parser.parse_args_and_config(list(sys.argv[1:] if argv is None else argv))
    except FileNotFoundError as err:
        raise ConfigError(f"config file {err.filename!r} does not exist.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file is not valid YAML: {one_line(err)}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(one_line(err)) from err


def run_recipe(parser: TrlParser, main: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run `main`; a `StackRLHFError` becomes one line on stderr and exit code 2."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        main(*parse_args(parser, argv))
    except StackRLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write a stage's summary (base model, data sizes, metrics) as `stackrlhf_summary.json` beside its outputs."""
    Path(output_dir, SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def dump_config(*configs: Any) -> str:
    """Render dataclass configs as one YAML document, one section per dataclass (JSON-safe values)."""
    sections = {}
    for config in configs:
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        sections[type(config).__name__] = json.loads(json.dumps(values, default=str))
    return yaml.safe_dump(sections, sort_keys=False, allow_unicode=True)
