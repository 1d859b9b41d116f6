"""A training stage's recipe: a YAML file parsed by HfArgumentParser into the project's arguments and
transformers' Seq2SeqTrainingArguments, command-line overrides on top (as huggingface/alignment-handbook
does). Every Seq2SeqTrainingArguments option is a recipe key (``lr_scheduler_kwargs``, ``torch_compile``,
``fsdp``...); the project adds the fields of ModelArguments and DataArguments below.

    recipe = load_recipe("training/recipes/stage1.yaml", learning_rate=3e-4)
    recipe.model_args.model, recipe.data_args.train_datasets, recipe.training_args.learning_rate

Values are checked against each field's type (YAML reads "1e-4" as a string, so numbers are parsed);
a wrong key or value is a RecipeError that says which and what to fix.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from cqa.format import DEFAULT_TURNS, NO_ANSWER
from training.data import DATASETS, JSONL, TRYOCOQA_SPLIT_SEED, DatasetSpec
from training.model import BASE_MODEL

logger = logging.getLogger("training.train")


@dataclass
class ModelArguments:
    """The checkpoint a stage starts from, and how its answers are generated when it is evaluated."""

    # A Hub id or a local directory; "tiny" builds a tiny random LongT5 (training.tiny) for smoke runs.
    model: str = BASE_MODEL
    tokenizer: str | None = None  # default: the model's own tokenizer
    eval_max_new_tokens: int = 128  # generation length when evaluating (the app's is 128)
    early_stopping_patience: int | None = None  # stop after N evaluations without a better F1


@dataclass
class DataArguments:
    """What a stage trains and is evaluated on, and how examples become model inputs."""

    train_datasets: list[DatasetSpec] = field(default_factory=list)
    eval_datasets: list[DatasetSpec] = field(default_factory=list)
    # mixed: all training sets shuffled together. sequential: one full run per training set, in the
    # listed order, each starting from the previous run's best checkpoint (training.train).
    scheme: str = "mixed"
    turns: int = DEFAULT_TURNS  # previous question/answer pairs in each input
    no_answer: str = NO_ANSWER  # the target of unanswerable questions
    # Longer inputs lose the end of their context, never the dialogue (cqa.format.fit_model_input,
    # the same rule as the app).
    max_input_length: int = 2048
    max_target_length: int = 128  # answers are short; longer targets are cut
    # The seed of TryoCoQA's 85/15 split by conversation, on purpose NOT `seed`: every run of a sweep
    # is scored on the same validation conversations. Recorded in results.json ("split").
    split_seed: int = TRYOCOQA_SPLIT_SEED


class Recipe(NamedTuple):
    model_args: ModelArguments
    data_args: DataArguments
    training_args: Any  # transformers.Seq2SeqTrainingArguments


class RecipeError(ValueError):
    """A recipe (or an override) that cannot be used; the message says what to fix."""


def trainer_defaults() -> dict[str, Any]:
    """Seq2SeqTrainingArguments values this project trains with unless a recipe says otherwise."""
    import torch

    return {
        "output_dir": "out/stage",  # checkpoints, results.json and best/ (the best model + tokenizer)
        "learning_rate": 1e-4,
        "optim": "adamw_torch",
        "save_total_limit": 2,  # checkpoints kept on disk; the best one is always kept
        "logging_steps": 10,
        "logging_first_step": True,
        "report_to": "none",  # tensorboard, wandb, ... (must be installed)
        # evaluate and save together (every epoch, or every eval_steps), keep the best checkpoint by F1
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "selection",  # F1, ties broken by the loss (callbacks.selection_score)
        "greater_is_better": True,
        "include_for_metrics": ["loss"],
        "predict_with_generate": True,
        # --resume brings back the callbacks' state too (early stopping's patience counter)
        "restore_callback_states_from_checkpoint": True,
        # non-reentrant checkpointing works with DDP and with frozen inputs
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "ddp_find_unused_parameters": False,
        # Without a GPU, processes started by torchrun / `accelerate launch --multi_gpu` then form a
        # CPU (gloo) process group instead of each training alone.
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def _parser():
    from transformers import HfArgumentParser, Seq2SeqTrainingArguments

    return HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read a recipe YAML file; ``overrides`` (field=value) replace what the file says."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist (recipes live in training/recipes/)") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"recipe {path} must be a mapping of field: value")
    return recipe_from_dict({**values, **overrides}, where=str(path))


def recipe_from_dict(values: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build and check a Recipe from plain values (what YAML or the command line gives)."""
    parser = _parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise RecipeError(
            f"{where}: unknown field(s) {unknown}; a recipe takes the fields of training.recipe's "
            "ModelArguments and DataArguments and every Seq2SeqTrainingArguments option "
            "(python -m training.train --help lists them)"
        )
    values = dict(values)
    # evaluate and save every eval_steps when it is set (else every epoch)
    if values.get("eval_steps") and "eval_strategy" not in values:
        values.update(eval_strategy="steps", save_strategy="steps")
        values.setdefault("save_steps", values["eval_steps"])
    checked = {**trainer_defaults(), **values}
    for name, value in checked.items():
        if name in ("train_datasets", "eval_datasets"):
            checked[name] = _dataset_specs(name, value, where)
        elif name != "resume_from_checkpoint":  # True (the last checkpoint) or a directory
            checked[name] = _coerce(name, value, actions[name], where)
    try:
        model_args, data_args, training_args = parser.parse_dict(checked)
    except (TypeError, ValueError) as error:  # Seq2SeqTrainingArguments' own checks
        raise RecipeError(f"{where}: {_named(str(error), values)}") from None
    _check(data_args, where)
    return Recipe(model_args, data_args, training_args)


def _named(message: str, values: dict[str, Any]) -> str:
    """The trainer's "X is not a valid SchedulerType" with the key that said X in front."""
    keys = [k for k, v in values.items() if isinstance(v, str) and message.startswith(f"{v} is not a valid")]
    return f"{keys[0]}: {message}" if keys else message


def _check(data: DataArguments, where: str) -> None:
    if data.scheme not in ("mixed", "sequential"):
        raise RecipeError(f"{where}: scheme must be mixed or sequential, got {data.scheme!r}")
    if not data.train_datasets:
        raise RecipeError(f"{where}: train_datasets is empty; list at least one {{name, file, split}}")
    if not data.eval_datasets:
        raise RecipeError(f"{where}: eval_datasets is empty: the best checkpoint is chosen by its F1")
    if data.max_input_length < 16:
        raise RecipeError(f"{where}: max_input_length={data.max_input_length} is too small")


def _coerce(name: str, value: Any, action, where: str) -> Any:
    """``value`` as the parser's type for the field (its argparse action) would read it."""
    if value is None or isinstance(value, dict):
        return value
    if action.nargs in ("+", "*"):
        return [_coerce_one(name, item, action.type, where) for item in _as_list(value)]
    return _coerce_one(name, value, action.type, where)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _coerce_one(name: str, value: Any, convert, where: str) -> Any:
    from transformers.hf_argparser import string_to_bool

    if convert is string_to_bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {name} must be true or false, got {value!r}")
    if convert in (int, float):
        if isinstance(value, (bool, dict, list)):
            raise RecipeError(f"{where}: {name} must be a number, got {value!r}")
        try:
            number = convert(float(value)) if isinstance(value, str) else convert(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: {name} must be a number, got {value!r}") from None
        if convert is int and float(value) != number:
            raise RecipeError(f"{where}: {name} must be a whole number, got {value!r}")
        return number
    if isinstance(value, (dict, list)):
        raise RecipeError(f"{where}: {name} must be a single value, got {value!r}")
    if convert is None or convert is str:
        return str(value)
    try:
        return convert(value)  # a choice (an enum or a Literal) or another parser type
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{where}: {name}={value!r}: {error}") from None


def _dataset_specs(name: str, value: Any, where: str) -> list[DatasetSpec]:
    if not isinstance(value, list):
        raise RecipeError(f"{where}: {name} must be a list of {{name, file, split}}, got {value!r}")
    return [_dataset_spec(item, f"{where}: {name}[{i}]") for i, item in enumerate(value)]


def _dataset_spec(item: Any, where: str) -> DatasetSpec:
    if isinstance(item, DatasetSpec):
        item = asdict(item)
    if not isinstance(item, dict) or "name" not in item:
        raise RecipeError(f"{where} must be a mapping like {{name: squad_v2, file: null, split: train}}")
    known = {f.name for f in fields(DatasetSpec)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; a dataset has {sorted(known)}")
    names = [*DATASETS, JSONL]
    if item["name"] not in names:
        raise RecipeError(f"{where}: unknown dataset {item['name']!r}; expected one of {names}")
    hints = typing.get_type_hints(DatasetSpec)
    values = {}
    for key, value in item.items():
        if value is None and type(None) in typing.get_args(hints[key]):
            values[key] = None
        elif hints[key] in (int, int | None):
            values[key] = _coerce_one(key, value, int, where)
        else:
            values[key] = _coerce_one(key, value, str, where)
    return DatasetSpec(**values)


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``--field value`` / ``--field=value`` pairs; each value read as YAML (numbers, true/false, lists)."""
    overrides: dict[str, Any] = {}
    items = list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise RecipeError(f"unexpected argument {flag!r}: overrides are --field value")
        name, equals, value = flag[2:].partition("=")
        name = name.replace("-", "_")
        if not equals:
            # a bare flag (--bf16, --gradient_checkpointing) means true
            value = items.pop(0) if items and not items[0].startswith("--") else "true"
        overrides[name] = yaml.safe_load(value)
    return overrides


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain values (OUTPUT_DIR/recipe.yaml): every field, the trainer's included."""
    import json

    return {
        **asdict(recipe.model_args),
        **asdict(recipe.data_args),
        **json.loads(recipe.training_args.to_json_string()),
    }
