"""One validation pass over a recipe's options, where they are parsed, before any model or data loads.

`validate_options` runs before the dataclasses are built (their `__post_init__`s then see only well-typed values
in range), `validate_arguments` after; the runner calls both for real runs and `--dry_run` alike:

* types: a `--config` file's values (and any other value set as a parser default) bypass argparse's `type=`
  conversion when they are not strings, so each is checked against its dataclass field's type hint; a string must
  convert as it would on the command line;
* ranges: `RANGES`, by option name, for whichever dataclass has the option;
* combinations: the recipe's own check (`recipe_parser(check=...)`), which may read files but loads no model;
* output directories and the stackrlhf cache (`cache_root`): a path that is a file, lies under a file or cannot be
  written; a local `dataset_name` that does not exist, or one file given a `dataset_config`.

Every problem is a `ConfigError` naming the option, its value and, for a config file's value, the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stackrlhf.data.arguments import DataArguments, check_dataset_name
from stackrlhf.errors import ConfigError, one_line
from stackrlhf.models.bundled import cache_root


@dataclasses.dataclass(frozen=True)
class Range:
    """The values an option accepts: `accepts(value)` is true for them, `text` says which they are."""

    accepts: Callable[[float], bool]
    text: str


def _at_least(low: int) -> Range:
    return Range(lambda value: value >= low, f"at least {low}")


_POSITIVE = Range(lambda value: value > 0, "greater than 0")
_PROBABILITY = Range(lambda value: 0 <= value <= 1, "between 0 and 1")

RANGES: dict[str, Range] = {
    "learning_rate": _POSITIVE,
    "num_train_epochs": _POSITIVE,
    "max_steps": Range(lambda value: value == -1 or value >= 1, "-1 (train num_train_epochs) or at least 1"),
    "steps": _at_least(1),
    "ppo_epochs": _at_least(1),
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "batch_size": _at_least(1),
    "mini_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "generation_batch_size": _at_least(1),
    "reward_batch_size": _at_least(1),
    "logging_steps": _POSITIVE,
    "eval_steps": _POSITIVE,
    "warmup_steps": _at_least(0),
    "weight_decay": _at_least(0),
    "max_grad_norm": _at_least(0),
    "save_total_limit": _at_least(1),
    "lora_r": _at_least(1),
    "lora_alpha": _POSITIVE,
    "lora_dropout": Range(lambda value: 0 <= value < 1, "at least 0 and below 1"),
    "eval_samples": _at_least(0),
    "max_samples": _at_least(1),
    "max_length": _at_least(1),
    "max_prompt_length": _at_least(1),
    "max_new_tokens": _at_least(1),
    "num_prompts": _at_least(1),
    "num_heldout_prompts": _at_least(0),
    "num_sample_prompts": _at_least(0),
    "sample_max_new_tokens": _at_least(1),
    "torch_threads": _at_least(1),
    "min_prompt_chars": _at_least(0),
    "query_min_length": _at_least(1),
    "gamma": _PROBABILITY,
    "lam": _PROBABILITY,
    "cliprange": _POSITIVE,
    "cliprange_value": _POSITIVE,
    "init_kl_coef": _at_least(0),
    "vf_coef": _at_least(0),
}
"""The range of each numeric option, by name, whichever recipe has it; None (an unset optional value) passes."""

OUTPUT_DIRS = ("output_dir",)
"""Options naming a directory the recipe writes into (created if missing)."""


def validate_options(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    config: Mapping[str, Any],
    config_path: str | None = None,
) -> None:
    """Check every option's value before the recipe's dataclasses are built: types, then ranges.

    Args:
        parser: the recipe's parser (a `TrlParser`), its defaults already set (offline config, overrides).
        argv: the command line without `--config PATH`.
        config: the `--config` file's values (empty without one); they replace the parser's defaults.
        config_path: the file, for messages.

    Raises:
        ConfigError: an unknown key in the config, a value of the wrong type (or a string that does not convert
            as on the command line), a value outside `choices`, a bad flag or flag value, or a value out of range.
    """
    actions = _actions_by_dest(parser)
    where = f"config file {config_path!r}: " if config_path else ""
    unknown = sorted(set(config) - set(actions) - {"env"})
    if unknown:
        raise ConfigError(f"{where}unknown option(s) {', '.join(unknown)} (see --help for the recipe's options).")
    for dataclass_type in parser.dataclass_types:
        hints = _type_hints(dataclass_type)
        for field in dataclasses.fields(dataclass_type):
            action = actions.get(field.name)
            if action is None or not field.init:
                continue
            value = config.get(field.name, action.default)
            if field.name not in config and (value is None or _is_field_default(field, value)):
                continue  # the parser's own default (argparse turns some into None)
            source = where if field.name in config else ""
            _check_type(field.name, value, hints.get(field.name, Any), action, source)
    for action in parser._actions:
        if action.dest in config:
            action.default = config[action.dest]
    try:
        namespace, extra = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as err:
        raise ConfigError(one_line(err)) from err
    if extra:
        raise ConfigError(f"unknown option(s) {' '.join(extra)} (see --help for the recipe's options).")
    for name, value in vars(namespace).items():
        check_range(name, value)


def check_range(name: str, value: Any) -> None:
    """Check `value` against `RANGES[name]` (numbers only; None and unlisted options pass).

    Raises:
        ConfigError: `name: value must be ...`.
    """
    limits = RANGES.get(name)
    if limits is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not limits.accepts(value):
        raise ConfigError(f"{name}: {value} must be {limits.text}.")


def validate_arguments(arguments: Sequence[Any], check: Callable[..., None] | None = None) -> None:
    """Check the built dataclasses: output directories, a local dataset path, the cache, then the recipe's own
    `check(*arguments)`.

    Raises:
        ConfigError: an output directory that is a file, lies under a file or cannot be written; a cache that is
            a file; a `dataset_config` or `dataset_data_dir` for a single data file; or what `check` rejects.
        DataError: a local `dataset_name` that does not exist.
    """
    for arguments_of in arguments:
        for name in OUTPUT_DIRS:
            if getattr(arguments_of, name, None):
                check_output_dir(getattr(arguments_of, name), name)
        if isinstance(arguments_of, DataArguments):
            check_dataset_name(arguments_of)
    cache_root()  # raises when $STACKRLHF_CACHE (or the default cache directory) is a file or lies under one
    if check is not None:
        check(*arguments)


def check_output_dir(path: str | Path, option: str) -> None:
    """`path` is a directory the run can write into, or one it can create.

    Raises:
        ConfigError: `path` is a file, an ancestor is a file, or the nearest existing directory is not writable.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--{option} {path}: a file, not a directory.")
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise ConfigError(f"--{option} {path}: cannot create it, {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it" if existing == target else f"{existing}"
        raise ConfigError(f"--{option} {path}: cannot write into {what} (permission denied).")


def check_output_file(path: str | Path, option: str) -> None:
    """`path` is a file the run can write: not a directory, in a writable directory that exists.

    Raises:
        ConfigError: `path` is a directory, its directory is missing or a file, or it cannot be written.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"--{option} {path}: a directory, not a file.")
    parent = target.parent
    if not parent.is_dir():
        raise ConfigError(f"--{option} {path}: {parent} is not a directory.")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise ConfigError(f"--{option} {path}: cannot write it (permission denied).")


def check_trainer_checkpoint(path: str | None) -> None:
    """`--resume_from_checkpoint` of a transformers `Trainer` run: a `checkpoint-N` directory with its
    `trainer_state.json` (None passes).

    Raises:
        ConfigError: a missing path, a file, or a directory without trainer_state.json.
    """
    if path is None:
        return
    checkpoint = Path(path).expanduser()
    if not checkpoint.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {path}: no such directory.")
    if not (checkpoint / "trainer_state.json").is_file():
        raise ConfigError(
            f"--resume_from_checkpoint {path}: no trainer_state.json in it, so not a checkpoint-N directory of "
            "a training run."
        )


def _nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option's main action (`--name`, not its `--no_name` complement or a dash-spelled alias)."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if f"--{action.dest}" in action.option_strings or action.dest not in actions:
            actions[action.dest] = action
    return actions


def _type_hints(dataclass_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(dataclass_type)
    except (NameError, TypeError):  # an unresolvable annotation: its fields are not type-checked
        return {}


def _is_field_default(field: dataclasses.Field, value: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False
    try:
        return bool(value is default or value == default)
    except Exception:  # noqa: BLE001 - a value that cannot be compared is checked like any other
        return False


def _check_type(name: str, value: Any, hint: Any, action: argparse.Action, where: str) -> None:
    """Raise a ConfigError unless `value` fits `hint` (a string: unless it converts as on the command line)."""
    if isinstance(value, str) and callable(action.type) and action.type is not str:
        try:
            converted = action.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"{where}{name}: {value!r} (str) is not {_describe(hint)} ({one_line(err)}).") from err
    elif isinstance(value, str) or _conforms(value, hint):
        converted = value
    else:
        raise ConfigError(f"{where}{name}: {value!r} ({type(value).__name__}) is not {_describe(hint)}.")
    if action.choices is not None and converted is not None:
        chosen = converted if isinstance(converted, list) else [converted]
        bad = [item for item in chosen if item not in action.choices]
        if bad:
            choices = ", ".join(str(choice) for choice in action.choices)
            raise ConfigError(f"{where}{name}: {bad[0]!r} is not one of {choices}.")


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type hint `hint`; hints it cannot judge accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:  # null too: configs unset string options that way (`reward_model: null`)
        return value is None or isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}
    if origin in (list, tuple, set, Sequence):
        return isinstance(value, (list, tuple)) and all(_conforms(item, args[0]) for item in value if args)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    if hint in (list, tuple):
        return isinstance(value, (list, tuple))
    return not isinstance(hint, type) or isinstance(value, hint)


def _describe(hint: Any) -> str:
    """`hint` in words: `an integer`, `a number or null`, `one of a, b`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(arm) for arm in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in hint)
    if origin in (list, tuple, set, Sequence):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
