"""Fine-tune LongT5 for conversational QA: one training stage per YAML recipe.

    python -m training.train training/recipes/stage1.yaml                    # SQuAD 2.0 + CoQA
    python -m training.train training/recipes/stage2.yaml --resume           # TryoCoQA, continue a run
    python -m training.train training/recipes/smoke_stage1.yaml --num_train_epochs 1 --output_dir /tmp/s1
    accelerate launch --config_file training/accelerate/multi_gpu.yaml -m training.train RECIPE.yaml

Every recipe field can be overridden on the command line as ``--field value`` (values are read as
YAML: ``--bf16 false``, ``--learning_rate 3e-4``, ``--train_datasets '[{name: coqa, file: c.json}]'``).

A stage is one Seq2SeqTrainer run: evaluate (greedy generation, token F1 / exact match) and save a
checkpoint at the end of every epoch (or every ``eval_steps``), keep the best checkpoint by F1, and
write it with its tokenizer to ``OUTPUT_DIR/best``. The trainer runs on Accelerate, so the same code
runs on a CPU, one GPU, DDP over several GPUs or nodes, or DeepSpeed, as ``accelerate launch`` says.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from cqa.format import ADDED_TOKENS, NO_ANSWER, dialogue_part, fit_model_input
from training.metrics import SCORE_NAME

logger = logging.getLogger("training.train")

BASE_MODEL = "google/long-t5-tglobal-base"
ADDED_TOKEN_IDS = [32100, 32101, 32102]  # where the published model has `||`, `<Q>`, `<A>`
EMBEDDING_MULTIPLE = 128  # google/long-t5-tglobal-base pads its 32,100-token vocabulary to 32,128 rows
DATASETS = ("squad_v2", "coqa", "tryocoqa", "jsonl")


# --- the recipe ----------------------------------------------------------------------------------


@dataclass
class DatasetSpec:
    """One dataset split to train or evaluate on."""

    # squad_v2 | coqa | tryocoqa (read by training.data), or jsonl: a file of examples already in the
    # model's format, one JSON object a line with "input" and "target" (optional "id", "answers").
    name: str
    # A local file in the dataset's official format. None: the dataset's official home (Hugging Face
    # Hub / GitHub). "smoke": the tiny built-in file (training.data.write_smoke_datasets).
    file: str | None = None
    split: str = "train"  # train | validation
    max_examples: int | None = None  # keep only the first N examples (e.g. a quicker validation)


@dataclass
class Recipe:
    """Everything one training stage needs. Loaded from YAML (load_recipe); CLI flags override it."""

    # --- what to train on ---
    # Starting checkpoint: a Hub id or a local directory; "tiny" builds a tiny random LongT5
    # (training.tiny) for smoke runs.
    model: str = BASE_MODEL
    tokenizer: str | None = None  # default: the model's own tokenizer
    output_dir: str = "out/stage"  # checkpoints, results.json and best/ (the best model + tokenizer)
    train_datasets: list[DatasetSpec] = field(default_factory=list)
    eval_datasets: list[DatasetSpec] = field(default_factory=list)
    # mixed: all training sets shuffled together. sequential: one full run per training set, in the
    # listed order, each starting from the previous run's best checkpoint (see _train_sequential).
    scheme: str = "mixed"
    turns: int = 2  # previous question/answer pairs in each input (cqa.format.DEFAULT_TURNS)
    no_answer: str = NO_ANSWER  # the target of unanswerable questions
    # --- lengths ---
    # Longer inputs lose the end of their context, never the dialogue (cqa.format.fit_model_input,
    # the same rule as the app).
    max_input_length: int = 2048
    max_target_length: int = 128  # answers are short; longer targets are cut
    eval_max_new_tokens: int = 128  # generation length when evaluating (the app's is 128)
    # --- optimisation ---
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides num_train_epochs)
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0  # fraction of the optimizer steps with a linear warmup
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    # examples per optimizer step = per_device_train_batch_size x gradient_accumulation_steps x GPUs
    gradient_accumulation_steps: int = 1
    # bfloat16 mixed precision; ignored (with a log line) without a GPU of compute capability >= 8.0
    # (Ampere or newer: V100 and T4 only emulate bf16, slowly, so they train in fp32)
    bf16: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: much less memory, ~30% slower
    # batches of similar input lengths (less padding when short and long examples are mixed, as SQuAD
    # paragraphs and CoQA stories are); the order stays random from one group to the next
    group_by_length: bool = False
    # --- evaluation and checkpoints ---
    eval_steps: int | None = None  # None: evaluate and save at the end of every epoch
    save_total_limit: int | None = 2  # checkpoints kept on disk; the best one is always kept
    early_stopping_patience: int | None = None  # stop after N evaluations without a better F1
    # True: continue from the last checkpoint in output_dir (CLI --resume); or a checkpoint directory.
    resume_from_checkpoint: bool | str | None = None
    overwrite_output_dir: bool = False  # delete old checkpoints in output_dir instead of refusing
    # --- reproducibility and logs ---
    seed: int = 42  # initialisation, shuffling, dropout: a seed sweep changes only this
    # The seed of TryoCoQA's 85/15 split by conversation, on purpose NOT `seed`: every run of a sweep
    # is scored on the same validation conversations. Recorded in results.json ("split").
    split_seed: int = 42
    logging_steps: int = 10
    dataloader_num_workers: int = 0
    report_to: str = "none"  # tensorboard, wandb, ... (must be installed)


class RecipeError(ValueError):
    """A recipe (or an override) that cannot be used; the message says what to fix."""


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Recipe)


def _coerce(name: str, value: typing.Any, hint: typing.Any, where: str) -> typing.Any:
    """Check ``value`` against the field's type; YAML reads "1e-4" as a string, so numbers are parsed."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{where}: {name} may not be empty")
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: {name} must be a list of {{name, file, split}}, got {value!r}")
        return [_dataset_spec(item, f"{where}: {name}[{i}]") for i, item in enumerate(value)]
    if args:  # a union: try its members in order (bool before str, int before float)
        for member in [a for a in args if a is not type(None)]:
            try:
                return _coerce(name, value, member, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: {name}={value!r} is not a valid {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {name} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise RecipeError(f"{where}: {name} must be a number, got {value!r}")
        try:
            number = hint(value) if not isinstance(value, str) else hint(float(value))
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: {name} must be a number, got {value!r}") from None
        if hint is int and float(value) != number:
            raise RecipeError(f"{where}: {name} must be a whole number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{where}: {name} must be a string, got {value!r}")
        return str(value)
    raise RecipeError(f"{where}: {name} has an unsupported type {hint}")


def _dataset_spec(item: typing.Any, where: str) -> DatasetSpec:
    if isinstance(item, DatasetSpec):
        item = asdict(item)
    if not isinstance(item, dict) or "name" not in item:
        raise RecipeError(f"{where} must be a mapping like {{name: squad_v2, file: null, split: train}}")
    known = {f.name for f in fields(DatasetSpec)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; a dataset has {sorted(known)}")
    if item["name"] not in DATASETS:
        raise RecipeError(f"{where}: unknown dataset {item['name']!r}; expected one of {list(DATASETS)}")
    hints = typing.get_type_hints(DatasetSpec)
    return DatasetSpec(**{k: _coerce(k, v, hints[k], where) for k, v in item.items()})


def load_recipe(path: str | Path, **overrides: typing.Any) -> Recipe:
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


def recipe_from_dict(values: dict[str, typing.Any], where: str = "recipe") -> Recipe:
    """Build and check a Recipe from plain values (what YAML or the CLI gives)."""
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(types)}")
    recipe = Recipe(**{k: _coerce(k, v, types[k], where) for k, v in values.items()})
    if recipe.scheme not in ("mixed", "sequential"):
        raise RecipeError(f"{where}: scheme must be mixed or sequential, got {recipe.scheme!r}")
    if not recipe.train_datasets:
        raise RecipeError(f"{where}: train_datasets is empty; list at least one {{name, file, split}}")
    if not recipe.eval_datasets:
        raise RecipeError(f"{where}: eval_datasets is empty: the best checkpoint is chosen by its F1")
    if recipe.max_input_length < 16:
        raise RecipeError(f"{where}: max_input_length={recipe.max_input_length} is too small")
    return recipe


# --- model and tokenizer -------------------------------------------------------------------------


def add_dialogue_tokens(tokenizer) -> int:
    """Add `||`, `<Q>`, `<A>` when the tokenizer lacks them; they must land at ids 32100-32102."""
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in ADDED_TOKENS if token not in vocabulary]
    added = tokenizer.add_tokens(missing) if missing else 0
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != ADDED_TOKEN_IDS:
        raise ValueError(
            f"the tokenizer has {ADDED_TOKENS} at ids {ids}, expected {ADDED_TOKEN_IDS}: it is not the T5 "
            "vocabulary (32,000 pieces + 100 sentinels) the published model uses"
        )
    return added


def tie_shared_embeddings(model) -> int:
    """Make the encoder's and decoder's ``embed_tokens`` the model's ``shared`` matrix again.

    T5 models embed with one matrix, ``shared``. A checkpoint that stores it three times (DeepSpeed's
    ``save_model`` does) loads as three separate matrices: ~25M parameters more for LongT5-base, which
    train apart, and ``shared`` itself is then unused, which DDP with ``find_unused_parameters=False``
    rejects ("Expected to have finished reduction in the prior iteration"). Returns how many were
    re-tied; a copy that differs from ``shared`` is replaced all the same, with a warning.
    """
    import torch

    shared = model.get_input_embeddings()
    retied = 0
    for name in ("encoder", "decoder"):
        stack = getattr(model, name)
        embed = stack.embed_tokens
        if embed is shared or embed.weight is shared.weight:
            continue
        if embed.weight.shape != shared.weight.shape or not torch.equal(embed.weight, shared.weight):
            logger.warning(
                "%s.embed_tokens differs from shared (the checkpoint was not saved from one tied "
                "model): using shared for both",
                name,
            )
        stack.set_input_embeddings(shared)
        retied += 1
    if retied:
        logger.info("re-tied %d embedding matrices to shared (the checkpoint stored them apart)", retied)
    return retied


def load_model_and_tokenizer(model_name: str, tokenizer_name: str | None = None):
    """The checkpoint and its tokenizer, with the dialogue tokens and room for them in the embeddings."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name)
    if not tokenizer.is_fast:
        raise ValueError(f"{tokenizer_name or model_name}: a fast tokenizer (tokenizer.json) is needed")
    added = add_dialogue_tokens(tokenizer)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name)
    tie_shared_embeddings(model)
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):  # never shrink: the base model already pads to 32,128 rows
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
        logger.info(
            "embeddings resized from %d to %d rows", rows, model.get_input_embeddings().num_embeddings
        )
    if added:
        logger.info("added %d dialogue tokens %s to the tokenizer", added, list(ADDED_TOKENS))
    return model, tokenizer


# --- data: one function per concern ---------------------------------------------------------------


def read_jsonl_examples(path: str | Path) -> list[dict]:
    """Examples already in the model's format: one JSON object a line with "input" and "target"."""
    examples = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or not {"input", "target"} <= set(record):
                raise ValueError(f'{path}:{number}: each line needs "input" and "target" strings')
            examples.append(
                {
                    "id": str(record.get("id", f"{Path(path).stem}-{number}")),
                    "input": record["input"],
                    "target": record["target"],
                    "answers": list(record.get("answers") or [record["target"]]),
                }
            )
    return examples


def load_dataset_examples(spec: DatasetSpec, recipe: Recipe) -> list[dict]:
    """The examples of one DatasetSpec as dicts with id, input, target, answers."""
    if spec.name == "jsonl":
        if not spec.file:
            raise ValueError("a jsonl dataset needs a file")
        examples = read_jsonl_examples(spec.file)
    else:
        from training.data import load_examples

        examples = load_examples(
            spec.name,
            spec.file,
            spec.split,
            no_answer=recipe.no_answer,
            turns=recipe.turns,
            split_seed=recipe.split_seed,
        )
    if spec.max_examples is not None:
        examples = examples[: spec.max_examples]
    if not examples:
        raise ValueError(f"dataset {spec.name} ({spec.file or 'official'}, {spec.split}) has no examples")
    return examples


_MARKER = re.compile(r"<([QA])(\d*)> ")


def split_model_input(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """(context, history, question) of a model input, so that the length rule can cut the context only.

    Inverse of cqa.format.build_model_input; raises ValueError for a string it did not build.
    """
    start = text.rfind(" || <Q")
    if start < 0 or not text.endswith(" <A> "):
        raise ValueError("not a model input: expected '{context} || ... <Q> {question} <A> '")
    context, dialogue = text[:start], text[start:]
    parts = _MARKER.split(dialogue[len(" || ") :] + " ")  # ['', 'Q', '2', 'older q ', 'A', '2', ...]
    chunks = [(parts[i], parts[i + 2].strip()) for i in range(1, len(parts) - 2, 3)]
    texts = [chunk_text for _, chunk_text in chunks]
    history = list(zip(texts[0:-2:2], texts[1:-2:2], strict=True))
    question = texts[-2] if len(texts) >= 2 else ""
    if dialogue_part(history, question, turns=len(history)) != dialogue:
        raise ValueError("could not split the model input into context, history and question")
    return context, history, question


def fit_inputs(batch: dict, tokenizer, max_input_length: int) -> dict:
    """Tokenize the inputs; one longer than max_input_length loses the end of its context only."""
    encoded = tokenizer(batch["input"])
    truncated = []
    for i, ids in enumerate(encoded["input_ids"]):
        if len(ids) <= max_input_length:
            truncated.append(False)
            continue
        try:
            context, history, question = split_model_input(batch["input"][i])
            fitted = fit_model_input(
                tokenizer.backend_tokenizer, context, history, question, max_input_length, turns=len(history)
            )
        except ValueError as error:
            raise ValueError(f"example {batch['id'][i]}: {error}") from None
        refit = tokenizer(fitted.text)
        encoded["input_ids"][i] = refit["input_ids"]
        encoded["attention_mask"][i] = refit["attention_mask"]
        truncated.append(True)
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "truncated": truncated,
    }


def tokenize_targets(batch: dict, tokenizer, max_target_length: int) -> dict:
    """The answer tokens the decoder learns to produce (end-of-sequence included)."""
    labels = tokenizer(text_target=batch["target"], max_length=max_target_length, truncation=True)
    return {"labels": labels["input_ids"]}


def build_dataset(examples: list[dict], tokenizer, recipe: Recipe, what: str):
    """A tokenized datasets.Dataset with input_ids, attention_mask and labels."""
    import datasets

    dataset = datasets.Dataset.from_list([{k: e[k] for k in ("id", "input", "target")} for e in examples])
    dataset = dataset.map(
        fit_inputs,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_input_length": recipe.max_input_length},
        desc=f"tokenizing {what} inputs",
    )
    dataset = dataset.map(
        tokenize_targets,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_target_length": recipe.max_target_length},
        desc=f"tokenizing {what} targets",
    )
    cut = sum(dataset["truncated"])
    if cut:
        logger.info(
            "%s: %d of %d inputs longer than %d tokens lost the end of their context",
            what,
            cut,
            len(dataset),
            recipe.max_input_length,
        )
    return dataset.remove_columns(["id", "input", "target", "truncated"])


def resolve_smoke_and_tiny(recipe: Recipe) -> Recipe:
    """Turn file: smoke into the built-in tiny files and model: tiny into a tiny random LongT5."""
    output = Path(recipe.output_dir)
    specs = recipe.train_datasets + recipe.eval_datasets
    if any(spec.file == "smoke" for spec in specs):
        from training.data import write_smoke_datasets

        files = write_smoke_datasets(output / "smoke-data")

        def smoke_file(spec: DatasetSpec) -> str | None:
            if spec.file != "smoke":
                return spec.file
            # one file per split for SQuAD and CoQA; TryoCoQA's one file is split by load_examples
            key = spec.name + ("_dev" if spec.split == "validation" and spec.name != "tryocoqa" else "")
            if key not in files:
                raise ValueError(
                    f"no built-in smoke file for {spec.name} {spec.split}; there are {sorted(files)}"
                )
            return str(files[key])

        recipe = replace(
            recipe,
            train_datasets=[replace(s, file=smoke_file(s)) for s in recipe.train_datasets],
            eval_datasets=[replace(s, file=smoke_file(s)) for s in recipe.eval_datasets],
        )
    if recipe.model == "tiny":
        from training.tiny import save_tiny

        tiny = save_tiny(output / "tiny-base", seed=recipe.seed, onnx=False) / "model"
        recipe = replace(recipe, model=str(tiny))
    return recipe


# --- evaluation inside the trainer ----------------------------------------------------------------


def decode(tokenizer, sequences) -> list[str]:
    """Token ids -> answer texts, exactly as the ONNX app decodes them (no clean-up of spaces)."""
    import numpy as np

    sequences = np.where(np.asarray(sequences) < 0, tokenizer.pad_token_id, sequences)  # -100 padding
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [text.strip() for text in texts]


# Ties in F1 go to the lower validation loss, by a margin far below any F1 difference that matters (a
# loss under 100 moves the score by less than 1e-5 F1 points). Early stopping ignores such margins.
LOSS_TIE_BREAK = 1e-7
TIE_MARGIN = 1e-4


def selection_score(f1: float, losses) -> float:
    """What picks the best checkpoint: the F1, and among equal F1s the lower validation loss (a random
    smoke model scores 0 F1 at every evaluation: the best one is then the most trained, not the first)."""
    import numpy as np

    if losses is None or not np.size(losses):
        return f1
    loss = float(np.mean(losses))
    return f1 - LOSS_TIE_BREAK * min(loss, 100.0) if math.isfinite(loss) else f1


def make_compute_metrics(tokenizer, references: list[list[str]], no_answer: str = NO_ANSWER):
    """compute_metrics for the trainer: F1 and exact match of the generated answers, in percent
    (training.metrics.SCORE_NAME: the no-answer text counts as the official empty answer)."""
    from training.metrics import score

    def compute_metrics(prediction) -> dict[str, float]:
        generated = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        texts = decode(tokenizer, generated)
        # With several processes the trainer gathers with gather_for_metrics, which drops the examples
        # Accelerate repeats to fill the last batch: one prediction per validation example, in order.
        # Were there more (a gather that keeps the repeats), the real ones come first.
        if len(texts) < len(references):
            raise RuntimeError(f"{len(texts)} predictions for {len(references)} validation examples")
        scores = score(texts[: len(references)], references, no_answer=no_answer)
        return {**scores, "selection": selection_score(scores["f1"], prediction.losses)}

    return compute_metrics


def _epoch_text(epoch: float | None) -> str:
    epoch = epoch or 0.0
    return f"{epoch:.0f}" if abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


def eval_history(log_history: list[dict]) -> list[dict]:
    """The evaluations of a run, in order: epoch, step, f1, exact, loss."""
    return [
        {
            "epoch": e.get("epoch"),
            "step": e["step"],
            "f1": e["eval_f1"],
            "exact": e["eval_exact"],
            "loss": e.get("eval_loss"),
            "selection": e.get("eval_selection", e["eval_f1"]),  # F1, ties broken by the loss
        }
        for e in log_history
        if "eval_f1" in e
    ]


def _epoch_log_callback():
    from transformers import TrainerCallback

    class EpochLogCallback(TrainerCallback):
        """One clear line per evaluation: epoch, F1, exact match and the best so far."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_f1" not in metrics:
                return
            history = eval_history(state.log_history)
            best = (
                max(history, key=lambda e: e["selection"])
                if history
                else {"f1": metrics["eval_f1"], "step": state.global_step}
            )
            where = f"epoch {_epoch_text(state.epoch)}/{_epoch_text(state.num_train_epochs)}"
            if args.max_steps > 0:
                where = f"step {state.global_step}/{state.max_steps} (epoch {_epoch_text(state.epoch)})"
            logger.info(
                "%s: eval f1=%.2f exact=%.2f (best %.2f at step %d)",
                where,
                metrics["eval_f1"],
                metrics["eval_exact"],
                best["f1"],
                best["step"],
            )

    return EpochLogCallback()


def _non_finite_loss_callback():
    from transformers import TrainerCallback

    class NonFiniteLossCallback(TrainerCallback):
        """Stop with a clear message when the logged training loss is NaN or infinite.

        LongT5 in bf16 can overflow (transformers issue #19322); every later step would be wasted and
        the best checkpoint stays the last finite one. The log lines also carry ``grad_norm``, whose
        growth usually comes first. Every process sees the same (averaged) loss, so all stop together.
        """

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss is {loss} at step {state.global_step} (grad_norm "
                    f"{(logs or {}).get('grad_norm')}): training diverged. With bf16, LongT5 can overflow "
                    "(transformers issue #19322): resume from the last checkpoint with --resume --bf16 "
                    "false, or lower the learning_rate"
                )

    return NonFiniteLossCallback()


def _callback_state_guard(trainer, early_stopping_patience: int | None):
    from transformers import EarlyStoppingCallback, TrainerCallback
    from transformers.trainer_callback import ExportableState

    class CallbackStateGuard(TrainerCallback):
        """On --resume the trainer restores the state of the callbacks the checkpoint knew
        (``restore_callback_states_from_checkpoint``: early stopping's patience counter). A callback
        the checkpoint did not know (``--early_stopping_patience`` added at resume) starts fresh
        instead of failing the first save (KeyError in ``stateful_callbacks``), and the recipe's
        patience wins over the one stored in the checkpoint."""

        def on_train_begin(self, args, state, control, **kwargs):
            for callback in trainer.callback_handler.callbacks:
                if not isinstance(callback, ExportableState):
                    continue
                name = type(callback).__name__
                if name not in state.stateful_callbacks:
                    if state.global_step:
                        logger.info("%s was not in the checkpoint: its state starts fresh", name)
                    state.stateful_callbacks[name] = callback.state()
                if isinstance(callback, EarlyStoppingCallback) and early_stopping_patience:
                    callback.early_stopping_patience = early_stopping_patience
                    if state.global_step:
                        logger.info(
                            "early stopping: %d of %d evaluations without a better F1 so far",
                            callback.early_stopping_patience_counter,
                            early_stopping_patience,
                        )

        def on_train_end(self, args, state, control, **kwargs):
            stopping = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
            for callback in stopping if state.is_world_process_zero else []:
                if callback.early_stopping_patience_counter >= callback.early_stopping_patience:
                    logger.info(
                        "stopped early at epoch %s: %d evaluations without a better F1",
                        _epoch_text(state.epoch),
                        callback.early_stopping_patience_counter,
                    )

    return CallbackStateGuard()


def examples_per_optimizer_step(per_device_batch_size: int, accumulation_steps: int, processes: int) -> int:
    """The examples behind one optimizer step: every process contributes its accumulated batches."""
    return per_device_batch_size * accumulation_steps * processes


def checkpoint_disagreement(names: Sequence[str | None]) -> str | None:
    """None when every process resumes from the same checkpoint (``names``: its name per rank, None for
    none found); otherwise the message that says why and what to do."""
    if len(set(names)) <= 1:
        return None
    seen = ", ".join(f"rank {rank}: {name or 'no checkpoint'}" for rank, name in enumerate(names))
    return (
        f"the processes disagree on the checkpoint to resume from ({seen}). Every machine must see the "
        "same output_dir: put it on a shared file system (NFS, a mounted bucket) for multi-node runs, or "
        "copy the checkpoint to the same path on every machine"
    )


def _check_same_checkpoint_everywhere(resume: str | bool | None) -> None:
    """Refuse a resume where the ranks found different checkpoints (multi-node without a shared disk:
    the other machines would silently start at step 0 while the main one resumes)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    mine = Path(resume).name if isinstance(resume, str) and Path(resume).is_dir() else None
    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, mine)
    problem = checkpoint_disagreement(names)
    if problem:
        raise ValueError(problem)


def split_record(recipe: Recipe) -> dict:
    """What results.json records of the train/validation split: the split seed and TryoCoQA's
    validation conversation ids (empty for a stage without TryoCoQA: SQuAD and CoQA files are splits)."""
    from training.data import tryocoqa_validation_ids

    specs = [s for s in recipe.train_datasets + recipe.eval_datasets if s.name == "tryocoqa"]
    ids: list[str] = []
    for file in dict.fromkeys(spec.file for spec in specs):
        ids += [i for i in tryocoqa_validation_ids(file, recipe.split_seed) if i not in ids]
    return {"seed": recipe.split_seed, "validation_ids": ids}


def save_best_model(trainer, best_dir: Path) -> None:
    """Write the best checkpoint's model and tokenizer to ``best_dir``, in fp32.

    load_best_model_at_end has put the best weights in the model. Under DeepSpeed with bf16 those are
    bfloat16 copies; the fp32 master weights live in the ZeRO checkpoint, so they are read from there
    (deepspeed.utils.zero_to_fp32) into an fp32 model of the same config, which also saves `shared`
    once (DeepSpeed's own save writes the three embedding matrices apart).
    """
    checkpoint = trainer.state.best_model_checkpoint
    if not trainer.is_deepspeed_enabled or checkpoint is None:
        trainer.save_model(str(best_dir))
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        write_fp32_from_zero_checkpoint(trainer.accelerator.unwrap_model(trainer.model), checkpoint, best_dir)
        trainer.processing_class.save_pretrained(str(best_dir))
    trainer.accelerator.wait_for_everyone()


def write_fp32_from_zero_checkpoint(model, checkpoint: str | Path, out: str | Path) -> None:
    """The fp32 weights of a DeepSpeed ZeRO checkpoint, saved as a transformers model like ``model``."""
    import copy

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    config = copy.deepcopy(model.config)
    fp32 = type(model)(config).to(torch.float32)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    missing, unexpected = fp32.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{checkpoint}: the ZeRO checkpoint does not match the model (missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
        )
    if "lm_head.weight" in missing and not config.tie_word_embeddings:
        raise RuntimeError(f"{checkpoint}: the ZeRO checkpoint has no lm_head.weight")
    tie_shared_embeddings(fp32)
    fp32.generation_config = copy.deepcopy(model.generation_config)
    fp32.save_pretrained(str(out))
    logger.info("%s: fp32 weights from the ZeRO checkpoint %s", out, Path(checkpoint).name)


# --- training ------------------------------------------------------------------------------------


def bf16_supported(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU of this CUDA compute capability (None: no GPU) runs bfloat16 natively.

    Ampere (8.0) and newer do. ``torch.cuda.is_bf16_supported()`` also says yes for V100 (7.0) and T4
    (7.5), which only emulate it, much slower than fp32.
    """
    return capability is not None and tuple(capability) >= (8, 0)


def _gpu_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def training_arguments(recipe: Recipe):
    """Seq2SeqTrainingArguments for the recipe: evaluate + save together, best checkpoint by F1."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    bf16 = recipe.bf16
    if bf16 and not bf16_supported(_gpu_capability()):
        logger.warning(
            "bf16 requested but there is no GPU with native bfloat16 (compute capability 8.0 or newer; "
            "found %s): training in fp32",
            _gpu_capability() or "no GPU",
        )
        bf16 = False
    strategy = "steps" if recipe.eval_steps else "epoch"
    return Seq2SeqTrainingArguments(
        output_dir=recipe.output_dir,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_ratio=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        optim=recipe.optim,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        bf16=bf16,
        gradient_checkpointing=recipe.gradient_checkpointing,
        # non-reentrant checkpointing works with DDP and with frozen inputs
        gradient_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        group_by_length=recipe.group_by_length,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=recipe.eval_steps,
        save_steps=recipe.eval_steps,
        save_total_limit=recipe.save_total_limit,
        load_best_model_at_end=True,
        # --resume brings back the callbacks' state too (early stopping's patience counter)
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="selection",  # F1, ties broken by the loss (selection_score)
        include_for_metrics=["loss"],
        greater_is_better=True,
        predict_with_generate=True,
        seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        dataloader_num_workers=recipe.dataloader_num_workers,
        ddp_find_unused_parameters=False,
        report_to=recipe.report_to,
        # Without a GPU, processes started by torchrun / `accelerate launch --multi_gpu` then form a
        # CPU (gloo) process group instead of each training alone.
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _prepare_output_dir(recipe: Recipe) -> str | bool | None:
    """What to resume from; refuses to mix a new run into old checkpoints unless told to."""
    from transformers.trainer_utils import get_last_checkpoint

    output = Path(recipe.output_dir)
    resume = recipe.resume_from_checkpoint
    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise ValueError(f"resume_from_checkpoint={resume} is not a directory")
        return resume
    if resume:
        if last is None:
            logger.info("no checkpoint in %s to resume from: starting from the beginning", output)
        else:
            logger.info("resuming from %s", last)
        return last
    if last is not None:
        if not recipe.overwrite_output_dir:
            raise ValueError(
                f"{output} already holds checkpoints ({Path(last).name}): pass --resume to continue that "
                "run, --overwrite_output_dir true to start over, or another --output_dir"
            )
        for old in [*output.glob("checkpoint-*"), output / "best"]:
            shutil.rmtree(old, ignore_errors=True)
    return None


def train(recipe: Recipe, callbacks: Sequence[typing.Any] = ()) -> dict:
    """Run one training stage. Returns best_checkpoint (OUTPUT_DIR/best), f1, exact (of the best
    evaluation), epochs, best_step, seconds and eval_history; also written to OUTPUT_DIR/results.json.

    ``callbacks``: extra transformers TrainerCallbacks (tests use one to interrupt a run).
    """
    if recipe.scheme == "sequential" and len(recipe.train_datasets) > 1:
        return _train_sequential(recipe, callbacks)
    return _train_stage(recipe, callbacks)


def _train_sequential(recipe: Recipe, callbacks: Sequence[typing.Any]) -> dict:
    """Scheme "sequential": train on A, then on B starting from A's best checkpoint, and so on.

    Each training set gets a full run of its own (its own warmup and decay, its own best-by-F1
    checkpoint) in OUTPUT_DIR/phase-N-NAME; the last run writes OUTPUT_DIR itself. We chose separate
    runs over one ordered data stream so that each phase is an ordinary fine-tune that can be resumed,
    inspected and evaluated on its own. All phases use the same validation sets.
    """
    recipe = resolve_smoke_and_tiny(recipe)
    model, phases = recipe.model, []
    for number, spec in enumerate(recipe.train_datasets, 1):
        last = number == len(recipe.train_datasets)
        output = recipe.output_dir if last else str(Path(recipe.output_dir) / f"phase-{number}-{spec.name}")
        done = Path(output) / "results.json"
        if not last and recipe.resume_from_checkpoint and done.is_file():
            logger.info("phase %d (%s) already finished in %s", number, spec.name, output)
            result = json.loads(done.read_text())
        else:
            logger.info(
                "phase %d/%d: training on %s from %s", number, len(recipe.train_datasets), spec.name, model
            )
            phase = replace(recipe, model=model, train_datasets=[spec], output_dir=output, scheme="mixed")
            result = _train_stage(phase, callbacks)
        phases.append({"dataset": spec.name, **result})
        model = result["best_checkpoint"]
    return {**phases[-1], "phases": phases}


def _train_stage(recipe: Recipe, callbacks: Sequence[typing.Any]) -> dict:
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainer, set_seed

    started = time.perf_counter()
    args = training_arguments(recipe)
    if args.should_log:
        logging.getLogger("training").setLevel(logging.INFO)
    with args.main_process_first(desc="preparing the model and data"):
        recipe = resolve_smoke_and_tiny(recipe)
        resume = _prepare_output_dir(recipe) if args.should_save else recipe.resume_from_checkpoint
        set_seed(recipe.seed)
        model, tokenizer = load_model_and_tokenizer(recipe.model, recipe.tokenizer)
        tokenizer.model_max_length = recipe.max_input_length
        model.generation_config.max_new_tokens = recipe.eval_max_new_tokens
        train_examples = [e for spec in recipe.train_datasets for e in load_dataset_examples(spec, recipe)]
        eval_examples = [e for spec in recipe.eval_datasets for e in load_dataset_examples(spec, recipe)]
        train_set = build_dataset(train_examples, tokenizer, recipe, "training")
        eval_set = build_dataset(eval_examples, tokenizer, recipe, "validation")
    if not args.should_save and resume is True:  # other processes follow the main one's choice
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(recipe.output_dir) if Path(recipe.output_dir).is_dir() else None
    if args.world_size > 1:
        _check_same_checkpoint_everywhere(resume)
    per_step = examples_per_optimizer_step(
        args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    )

    if args.should_log:
        Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(recipe.output_dir) / "recipe.yaml").write_text(yaml.safe_dump(asdict(recipe), sort_keys=False))
        logger.info(
            "world size %d (%s), %d examples per device per step, gradient accumulation %d: "
            "%d examples per optimizer step; %d training / %d validation examples; bf16 %s, "
            "gradient checkpointing %s",
            args.world_size,
            args.distributed_state.distributed_type,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            per_step,
            len(train_set),
            len(eval_set),
            args.bf16,
            args.gradient_checkpointing,
        )

    extra = [_epoch_log_callback(), _non_finite_loss_callback(), *callbacks]
    if recipe.early_stopping_patience:
        extra.append(
            EarlyStoppingCallback(
                early_stopping_patience=recipe.early_stopping_patience, early_stopping_threshold=TIE_MARGIN
            )
        )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, model=model, pad_to_multiple_of=8 if args.bf16 else None
        ),
        compute_metrics=make_compute_metrics(
            tokenizer, [e["answers"] for e in eval_examples], recipe.no_answer
        ),
        callbacks=extra,
    )
    trainer.add_callback(_callback_state_guard(trainer, recipe.early_stopping_patience))
    trainer.train(resume_from_checkpoint=resume)

    best_dir = Path(recipe.output_dir) / "best"
    save_best_model(trainer, best_dir)  # the best checkpoint's weights: load_best_model_at_end
    history = eval_history(trainer.state.log_history)
    best_checkpoint = trainer.state.best_model_checkpoint
    best_step = int(best_checkpoint.rsplit("-", 1)[1]) if best_checkpoint else trainer.state.global_step
    best = next((e for e in history if e["step"] == best_step), {"f1": math.nan, "exact": math.nan})
    result = {
        "best_checkpoint": str(best_dir),
        "best_step": best_step,
        "best_trainer_checkpoint": best_checkpoint,
        "f1": best["f1"],
        "exact": best["exact"],
        "metric": SCORE_NAME,  # the figure that picked the best checkpoint
        "epochs": trainer.state.epoch,
        "global_step": trainer.state.global_step,
        "seconds": time.perf_counter() - started,
        "world_size": args.world_size,
        "examples_per_step": per_step,
        "split": split_record(recipe),
        "eval_history": history,
    }
    if trainer.is_world_process_zero():
        (Path(recipe.output_dir) / "results.json").write_text(json.dumps(result, indent=2))
        logger.info(
            "best: f1=%.2f exact=%.2f at step %d; model and tokenizer in %s (%.0f s)",
            result["f1"],
            result["exact"],
            best_step,
            best_dir,
            result["seconds"],
        )
    return result


# --- command line --------------------------------------------------------------------------------


def parse_overrides(extra: Sequence[str]) -> dict[str, typing.Any]:
    """``--field value`` / ``--field=value`` pairs; each value read as YAML (numbers, true/false, lists)."""
    overrides: dict[str, typing.Any] = {}
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


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", type=Path, help="a YAML recipe, e.g. training/recipes/stage1.yaml")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the last checkpoint in output_dir (or from CHECKPOINT)",
    )
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout
    )
    try:
        overrides = parse_overrides(extra)
        if args.resume is not None:
            overrides["resume_from_checkpoint"] = args.resume
        recipe = load_recipe(args.recipe, **overrides)
    except RecipeError as error:
        parser.error(str(error))
    try:
        return train(recipe)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
