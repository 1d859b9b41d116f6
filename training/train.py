"""Fine-tune LongT5 for conversational QA: one training stage per YAML recipe.

    python -m training.train training/recipes/stage1.yaml                    # SQuAD 2.0 + CoQA
    python -m training.train training/recipes/stage2.yaml --resume           # TryoCoQA, continue a run
    python -m training.train training/recipes/smoke_stage1.yaml --num_train_epochs 1 --output_dir /tmp/s1
    accelerate launch --config_file training/accelerate/multi_gpu.yaml -m training.train RECIPE.yaml

A recipe (training.recipe) is the project's fields plus any Seq2SeqTrainingArguments option; every one
can be overridden on the command line as ``--field value`` (values are read as YAML: ``--bf16 false``,
``--learning_rate 3e-4``, ``--train_datasets '[{name: coqa, file: c.json}]'``).

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
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from training.callbacks import (
    TIE_MARGIN,
    callback_state_guard,
    epoch_log_callback,
    eval_history,
    make_compute_metrics,
    non_finite_loss_callback,
)
from training.data import build_dataset, load_dataset_examples, resolve_smoke_files
from training.metrics import SCORE_NAME
from training.model import load_model_and_tokenizer, resolve_model, write_fp32_from_zero_checkpoint
from training.recipe import Recipe, RecipeError, load_recipe, parse_overrides, recipe_record

logger = logging.getLogger("training.train")


def train(recipe: Recipe, callbacks: Sequence[Any] = ()) -> dict:
    """Run one training stage. Returns best_checkpoint (OUTPUT_DIR/best), f1, exact (of the best
    evaluation), epochs, best_step, seconds and eval_history; also written to OUTPUT_DIR/results.json.

    ``callbacks``: extra transformers TrainerCallbacks (tests use one to interrupt a run).
    """
    if recipe.data_args.scheme == "sequential" and len(recipe.data_args.train_datasets) > 1:
        return _train_sequential(resolve_smoke_and_tiny(recipe), callbacks)
    return _train_stage(recipe, callbacks)


def resolve_smoke_and_tiny(recipe: Recipe) -> Recipe:
    """``file: smoke`` -> the built-in tiny files, ``model: tiny`` -> a tiny random LongT5 (both written
    to the output directory)."""
    model, data, args = recipe
    output = args.output_dir
    data = replace(
        data,
        train_datasets=resolve_smoke_files(data.train_datasets, output),
        eval_datasets=resolve_smoke_files(data.eval_datasets, output),
    )
    model = replace(model, model=resolve_model(model.model, output, args.seed))
    return Recipe(model, data, args)


def _train_sequential(recipe: Recipe, callbacks: Sequence[Any]) -> dict:
    """Scheme "sequential": train on A, then on B starting from A's best checkpoint, and so on.

    Each training set gets a full run of its own (its own warmup and decay, its own best-by-F1
    checkpoint) in OUTPUT_DIR/phase-N-NAME; the last run writes OUTPUT_DIR itself. We chose separate
    runs over one ordered data stream so that each phase is an ordinary fine-tune that can be resumed,
    inspected and evaluated on its own. All phases use the same validation sets.
    """
    model_args, data_args, args = recipe
    model, phases, specs = model_args.model, [], data_args.train_datasets
    for number, spec in enumerate(specs, 1):
        last = number == len(specs)
        output = args.output_dir if last else str(Path(args.output_dir) / f"phase-{number}-{spec.name}")
        done = Path(output) / "results.json"
        if not last and args.resume_from_checkpoint and done.is_file():
            logger.info("phase %d (%s) already finished in %s", number, spec.name, output)
            result = json.loads(done.read_text())
        else:
            logger.info("phase %d/%d: training on %s from %s", number, len(specs), spec.name, model)
            phase = Recipe(
                replace(model_args, model=model),
                replace(data_args, train_datasets=[spec], scheme="mixed"),
                replace(args, output_dir=output),
            )
            result = _train_stage(phase, callbacks)
        phases.append({"dataset": spec.name, **result})
        model = result["best_checkpoint"]
    return {**phases[-1], "phases": phases}


def _train_stage(recipe: Recipe, callbacks: Sequence[Any]) -> dict:
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainer, set_seed

    started = time.perf_counter()
    args = _without_emulated_bf16(recipe.training_args)
    if args.should_log:
        logging.getLogger("training").setLevel(logging.INFO)
    with args.main_process_first(desc="preparing the model and data"):
        model_args, data, _ = resolve_smoke_and_tiny(recipe)
        resume = _prepare_output_dir(args) if args.should_save else _resume_flag(args.resume_from_checkpoint)
        set_seed(args.seed)
        model, tokenizer = load_model_and_tokenizer(model_args.model, model_args.tokenizer)
        tokenizer.model_max_length = data.max_input_length
        model.generation_config.max_new_tokens = model_args.eval_max_new_tokens
        train_examples = _examples(data.train_datasets, data)
        eval_examples = _examples(data.eval_datasets, data)
        train_set = _tokenized(train_examples, tokenizer, data, "training")
        eval_set = _tokenized(eval_examples, tokenizer, data, "validation")
    resume = _same_resume_everywhere(args, resume)
    if args.should_log:
        _log_start(Recipe(model_args, data, args), len(train_set), len(eval_set))

    extra = [epoch_log_callback(), non_finite_loss_callback(), *callbacks]
    patience = model_args.early_stopping_patience
    if patience:
        extra.append(
            EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=TIE_MARGIN)
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
            tokenizer, [e["answers"] for e in eval_examples], data.no_answer
        ),
        callbacks=extra,
    )
    trainer.add_callback(callback_state_guard(trainer, patience))
    trainer.train(resume_from_checkpoint=resume)

    best_dir = Path(args.output_dir) / "best"
    save_best_model(trainer, best_dir)  # the best checkpoint's weights: load_best_model_at_end
    result = _stage_result(trainer, best_dir, data, time.perf_counter() - started)
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "results.json").write_text(json.dumps(result, indent=2))
        logger.info(
            "best: f1=%.2f exact=%.2f at step %d; model and tokenizer in %s (%.0f s)",
            result["f1"],
            result["exact"],
            result["best_step"],
            best_dir,
            result["seconds"],
        )
    return result


def _examples(specs, data) -> list[dict]:
    return [e for spec in specs for e in load_dataset_examples(spec, data.no_answer, data.split_seed)]


def _tokenized(examples: list[dict], tokenizer, data, what: str):
    lengths = {"max_input_length": data.max_input_length, "max_target_length": data.max_target_length}
    return build_dataset(examples, tokenizer, **lengths, turns=data.turns, what=what)


def _log_start(recipe: Recipe, train_examples: int, eval_examples: int) -> None:
    """OUTPUT_DIR/recipe.yaml (every field of the run) and one line on the processes and batches."""
    args = recipe.training_args
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "recipe.yaml").write_text(yaml.safe_dump(recipe_record(recipe), sort_keys=False))
    logger.info(
        "world size %d (%s), %d examples per device per step, gradient accumulation %d: "
        "%d examples per optimizer step; %d training / %d validation examples; bf16 %s, "
        "gradient checkpointing %s",
        args.world_size,
        args.distributed_state.distributed_type,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        _examples_per_step(args),
        train_examples,
        eval_examples,
        args.bf16,
        args.gradient_checkpointing,
    )


def _stage_result(trainer, best_dir: Path, data, seconds: float) -> dict:
    """What results.json records: the best evaluation (and where its weights are), the run's size and
    length, the split, and every evaluation."""
    state, args = trainer.state, trainer.args
    history = eval_history(state.log_history)
    best_step = (
        int(state.best_model_checkpoint.rsplit("-", 1)[1])
        if state.best_model_checkpoint
        else state.global_step
    )
    best = next((e for e in history if e["step"] == best_step), {"f1": math.nan, "exact": math.nan})
    return {
        "best_checkpoint": str(best_dir),
        "best_step": best_step,
        "best_trainer_checkpoint": state.best_model_checkpoint,
        "f1": best["f1"],
        "exact": best["exact"],
        "metric": SCORE_NAME,  # the figure that picked the best checkpoint
        "epochs": state.epoch,
        "global_step": state.global_step,
        "seconds": seconds,
        "world_size": args.world_size,
        "examples_per_step": _examples_per_step(args),
        "split": split_record(data),
        "eval_history": history,
    }


# --- the details --------------------------------------------------------------------------------------


def bf16_supported(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU of this CUDA compute capability (None: no GPU) runs bfloat16 natively.

    Ampere (8.0) and newer do. ``torch.cuda.is_bf16_supported()`` also says yes for V100 (7.0) and T4
    (7.5), which only emulate it, much slower than fp32.
    """
    return capability is not None and tuple(capability) >= (8, 0)


def _gpu_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def _without_emulated_bf16(args):
    """The recipe's bf16 only on a GPU that runs it natively; fp32 elsewhere, with a log line."""
    if args.bf16 and not bf16_supported(_gpu_capability()):
        logger.warning(
            "bf16 requested but there is no GPU with native bfloat16 (compute capability 8.0 or newer; "
            "found %s): training in fp32",
            _gpu_capability() or "no GPU",
        )
        return replace(args, bf16=False)
    return args


def _resume_flag(resume: str | bool | None) -> str | bool | None:
    """resume_from_checkpoint as given: True (also "true" from the command line) means the last one."""
    return True if isinstance(resume, str) and resume.lower() == "true" else resume


def _prepare_output_dir(args) -> str | bool | None:
    """What to resume from; refuses to mix a new run into old checkpoints unless told to."""
    from transformers.trainer_utils import get_last_checkpoint

    output = Path(args.output_dir)
    resume = _resume_flag(args.resume_from_checkpoint)
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
        if not args.overwrite_output_dir:
            raise ValueError(
                f"{output} already holds checkpoints ({Path(last).name}): pass --resume to continue that "
                "run, --overwrite_output_dir true to start over, or another --output_dir"
            )
        for old in [*output.glob("checkpoint-*"), output / "best"]:
            shutil.rmtree(old, ignore_errors=True)
    return None


def _same_resume_everywhere(args, resume: str | bool | None) -> str | bool | None:
    """The main process chose what to resume from; the others look for the same last checkpoint, and
    a multi-process run whose processes found different ones is refused."""
    if not args.should_save and resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if args.world_size > 1:
        _check_same_checkpoint_everywhere(resume)
    return resume


def _examples_per_step(args) -> int:
    return examples_per_optimizer_step(
        args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    )


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


def split_record(data) -> dict:
    """What results.json records of the train/validation split: the split seed and TryoCoQA's
    validation conversation ids (empty for a stage without TryoCoQA: SQuAD and CoQA files are splits)."""
    from training.data import tryocoqa_validation_ids

    specs = [s for s in data.train_datasets + data.eval_datasets if s.name == "tryocoqa"]
    ids: list[str] = []
    for file in dict.fromkeys(spec.file for spec in specs):
        ids += [i for i in tryocoqa_validation_ids(file, data.split_seed) if i not in ids]
    return {"seed": data.split_seed, "validation_ids": ids}


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


# --- command line --------------------------------------------------------------------------------


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
