"""The whole release in one command: train both stages, export, quantize, evaluate, write the cards, push.

    python -m training.pipeline --config training/recipes/stage1.yaml training/recipes/stage2.yaml \\
        --output out/release [--push-to-hub ORG/NAME] [--dry-run]
    python -m training.pipeline --smoke --output out/smoke     # tiny model, tiny data, a few CPU minutes

Steps (each logs one line with its time; a step whose outputs are complete is skipped, and everything
after a step that ran is redone). A stage trained elsewhere (`accelerate launch -m training.train RECIPE
--output_dir OUT/stageN` on several GPUs) counts as done once OUT/stageN has results.json and best/.

    stage1, stage2, ...  one training.train run per recipe, in OUT/stageN; stage N+1 starts from stage N's
                         best checkpoint; an interrupted stage resumes from its last trainer checkpoint,
                         a stage redone because an earlier step ran starts over (OUT/stageN removed)
    model                the last stage's best checkpoint, copied to OUT/model
    export               OUT/onnx: three-file ONNX export behind the parity gate (training.export)
    int8                 OUT/onnx-int8: dynamic int8, same file names (greedy agreement with fp32)
    evaluation           fp32 and int8 ONNX answers on the last stage's validation questions: F1/EM
                         against the gold answers, and token F1 of int8 against fp32 (gate: >= 0.95);
                         every answer in OUT/evaluation.json
    cards                README.md in OUT/model, OUT/onnx, OUT/onnx-int8 from model_card.md
    push                 --push-to-hub ORG/NAME: OUT/model -> ORG/NAME; OUT/onnx and the int8 files (as
                         *_quantized.onnx) -> ORG/NAME-onnx. With --dry-run: the file list only.

OUT/results.json gathers every figure: per stage f1, exact, epochs, best step and seconds; the export's
parity figures; int8 agreement and F1.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from training import export
from training.publish import Upload, folder_files, push, quantized_files, render_card

log = logging.getLogger("training.pipeline")

RECIPES = Path(__file__).resolve().parent / "recipes"
SMOKE_RECIPES = (RECIPES / "smoke_stage1.yaml", RECIPES / "smoke_stage2.yaml")
INT8_MIN_F1 = 0.95  # token F1 of int8 answers against fp32 answers, on the validation questions
MODEL_FILES_LEFT_OUT = ("training_args.bin",)  # a pickle of the trainer's arguments: not for the Hub


class GateError(RuntimeError):
    """A release gate failed (int8 answers too far from fp32); nothing is pushed."""


# ------------------------------------------------------------------------------------------- the steps


def _stage_recipe(number: int, recipe_path: Path, out: Path, start_model: str | None):
    from training.train import load_recipe

    overrides = {"output_dir": str(out / f"stage{number}"), "resume_from_checkpoint": True}
    if start_model:
        overrides["model"] = start_model
    return load_recipe(recipe_path, **overrides)


def train_stage(
    number: int, recipe_path: Path, out: Path, start_model: str | None, fresh: bool = False
) -> None:
    """Train one stage into OUT/stageN, resuming from its last checkpoint if there is one; ``fresh``:
    remove OUT/stageN first and start over (its checkpoints came from an older starting model)."""
    from training.train import train

    stage_dir = out / f"stage{number}"
    if fresh and stage_dir.exists():
        log.info("[pipeline] stage%d: an earlier step ran, so %s is stale: starting over", number, stage_dir)
        shutil.rmtree(stage_dir)
    train(_stage_recipe(number, recipe_path, out, start_model))


def stage_result(number: int, recipe_path: Path, out: Path, start_model: str | None) -> dict:
    """What results.json records of a finished stage: its recipe's settings and training.train's result
    (read from OUT/stageN/results.json, so stages trained elsewhere, e.g. with accelerate launch, count)."""
    recipe = _stage_recipe(number, recipe_path, out, start_model)
    result = json.loads((out / f"stage{number}" / "results.json").read_text())
    summary = _recipe_summary(recipe, result.get("world_size"))
    return {"name": f"stage{number}", "recipe": str(recipe_path), **summary, **result}


def _recipe_summary(recipe, processes: int | None = None) -> dict:
    """The recipe's settings the card shows; batch_size is the examples per optimizer step, counting
    every process the stage ran on (results.json's world_size; 1 when it does not say)."""
    from training.train import examples_per_optimizer_step

    return {
        "model": recipe.model,
        "data": " + ".join(spec.name for spec in recipe.train_datasets),
        "learning_rate": recipe.learning_rate,
        "batch_size": examples_per_optimizer_step(
            recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps, processes or 1
        ),
        "max_input_tokens": recipe.max_input_length,
        "num_train_epochs": recipe.num_train_epochs,
    }


def copy_model(best: Path, model_dir: Path) -> None:
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best, staging, ignore=shutil.ignore_patterns(*MODEL_FILES_LEFT_OUT))
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)


def validation_examples(recipe_path: Path, out: Path, number: int) -> tuple[list[dict], object]:
    """The last stage's validation examples (as its trainer saw them) and its recipe."""
    from training.train import load_dataset_examples, load_recipe, resolve_smoke_and_tiny

    recipe = load_recipe(recipe_path, output_dir=str(out / f"stage{number}"), model=str(out / "model"))
    recipe = resolve_smoke_and_tiny(recipe)
    return [e for spec in recipe.eval_datasets for e in load_dataset_examples(spec, recipe)], recipe


def onnx_answers(
    onnx_dir: Path, examples: Sequence[dict], max_input_tokens: int, max_new_tokens: int
) -> list:
    """Greedy answers of the cqa runtime (what the app serves), inputs cut like in training."""
    from cqa.format import fit_model_input
    from cqa.generator import Seq2SeqGenerator
    from training.train import split_model_input

    generator = Seq2SeqGenerator.load(onnx_dir)
    answers = []
    for example in examples:
        text = example["input"]
        if generator.count_tokens(text) > max_input_tokens:
            context, history, question = split_model_input(text)
            text = fit_model_input(
                generator.tokenizer, context, history, question, max_input_tokens, len(history)
            ).text
        answers.append(generator.generate(text, max_new_tokens).text)
    return answers


def evaluation_step(recipe_path: Path, out: Path, number: int, int8_dir: Path | None) -> dict:
    """fp32 (and int8) ONNX answers on the last stage's validation questions; the int8 gate."""
    from training.metrics import score

    examples, recipe = validation_examples(recipe_path, out, number)
    gold = [e["answers"] for e in examples]
    fp32 = onnx_answers(out / "onnx", examples, recipe.max_input_length, recipe.eval_max_new_tokens)
    result = {
        "dataset": " + ".join(f"{s.name} {s.split}" for s in recipe.eval_datasets),
        "examples": len(examples),
        "onnx_fp32": score(fp32, gold),
    }
    int8 = None
    if int8_dir is not None:
        int8 = onnx_answers(int8_dir, examples, recipe.max_input_length, recipe.eval_max_new_tokens)
        agreement = score(int8, [[answer] for answer in fp32])  # fp32's answer as the only gold one
        result["onnx_int8"] = score(int8, gold)
        result["int8_vs_fp32_f1"] = agreement["f1"] / 100
        result["int8_vs_fp32_exact"] = agreement["exact"] / 100
        result["int8_gate_passed"] = result["int8_vs_fp32_f1"] >= INT8_MIN_F1
    result["predictions"] = [
        {"id": example["id"], "gold": example["answers"], "fp32": fp32[i], "int8": int8[i] if int8 else None}
        for i, example in enumerate(examples)
    ]
    return result


# ----------------------------------------------------------------------------------------------- cards


def _fmt(value, digits: int = 2) -> str | None:
    if value is None or value != value:  # None or NaN
        return None
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def card_fields(results: dict, repo_id: str | None, smoke: bool) -> dict:
    """The model card's fields from results.json (what is not known renders as n/a)."""
    fields: dict = {"code_url": _git("remote", "get-url", "origin"), "code_commit": _git("rev-parse", "HEAD")}
    if repo_id:
        fields.update(repo_id=repo_id, onnx_repo_id=f"{repo_id}-onnx")
    if smoke:
        fields["smoke_note"] = (
            "**Smoke-test model**: a tiny random LongT5 trained for a few steps on tiny built-in data "
            "by `python -m training.pipeline --smoke`. It checks the release machinery; its answers "
            "mean nothing."
        )
    for stage in results.get("stages", []):
        key = stage["name"]
        fields.update(
            {
                f"{key}_data": stage.get("data"),
                f"{key}_epochs": _fmt(stage.get("epochs"), 1),
                f"{key}_learning_rate": stage.get("learning_rate"),
                f"{key}_batch_size": stage.get("examples_per_step", stage.get("batch_size")),
                f"{key}_max_input_tokens": stage.get("max_input_tokens"),
                f"{key}_best_step": stage.get("best_step"),
                f"{key}_time": f"{stage['seconds'] / 60:.1f} min" if stage.get("seconds") else None,
                f"{key}_f1": _fmt(stage.get("f1")),
                f"{key}_exact": _fmt(stage.get("exact")),
            }
        )
    parity = results.get("export", {})
    if parity.get("max_relative_error"):
        fields["parity_max_rel_error"] = f"{max(parity['max_relative_error']):.1e}"
        fields["parity_lengths"] = ", ".join(str(n) for n in parity["lengths"])
    int8 = results.get("int8", {})
    if int8:
        settings = int8["settings"]
        fields["int8_settings"] = (
            f"{settings['weight_type']} weights, per-channel {settings['per_channel']}, "
            f"ops {', '.join(settings['op_types'] or ['all'])}"
        )
        fields["int8_agreement"] = f"{int8['agreement']:.0%}"
    evaluation = results.get("evaluation", {})
    if "int8_vs_fp32_f1" in evaluation:
        fields["int8_f1"] = f"{evaluation['int8_vs_fp32_f1']:.3f}"
    return fields


def write_cards(out: Path, results: dict, repo_id: str | None, smoke: bool) -> None:
    fields = card_fields(results, repo_id, smoke)
    variants = {"model": "PyTorch", "onnx": "ONNX", "onnx-int8": "ONNX, dynamic int8"}
    for folder, variant in variants.items():
        if (out / folder).is_dir():
            (out / folder / "README.md").write_text(render_card({**fields, "variant": variant}))


# -------------------------------------------------------------------------------------------- pipeline


def uploads(out: Path, repo_id: str, int8: bool = True) -> list[Upload]:
    """ORG/NAME gets OUT/model; ORG/NAME-onnx gets OUT/onnx plus the int8 files as *_quantized.onnx."""
    onnx_files = folder_files(out / "onnx")
    if int8:
        onnx_files += quantized_files(out / "onnx-int8")
    return [Upload(repo_id, folder_files(out / "model")), Upload(f"{repo_id}-onnx", onnx_files)]


def _complete(*paths: Path) -> bool:
    return all(path.exists() for path in paths)


def run_pipeline(
    configs: Sequence[str | Path],
    output: str | Path,
    *,
    smoke: bool = False,
    int8: bool = True,
    push_to_hub: str | None = None,
    dry_run: bool = False,
    private: bool = False,
) -> dict:
    """Run (or resume) every step; returns what OUT/results.json holds."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(smoke=smoke, configs=[str(c) for c in configs])
    results.setdefault("steps", {})
    ran_before = False  # once a step runs, every later step runs too (its inputs changed)

    def step(name: str, done: bool, action: Callable[[], object]) -> None:
        nonlocal ran_before
        if done and not ran_before:
            log.info("[pipeline] %-10s skipped: outputs complete", name)
            results["steps"][name] = {**results["steps"].get(name, {}), "skipped": True}
            return
        log.info("[pipeline] %-10s running", name)
        start = time.perf_counter()
        action()
        seconds = round(time.perf_counter() - start, 2)
        ran_before = True
        results["steps"][name] = {"seconds": seconds, "skipped": False}
        results_path.write_text(json.dumps(results, indent=2) + "\n")  # progress survives a crash
        log.info("[pipeline] %-10s done in %.1f s", name, seconds)

    # Stage 1's starting point for --smoke: a tiny random LongT5 with the T5-layout tokenizer.
    start_model: str | None = None
    if smoke:
        from training.tiny import save_tiny

        base = out / "base"
        step("base", _complete(base / "model" / "config.json"), lambda: save_tiny(base, onnx=False))
        start_model = str(base / "model")

    stages = []
    for number, recipe_path in enumerate(configs, 1):
        stage_dir, recipe_path = out / f"stage{number}", Path(recipe_path)
        # If an earlier step ran (a new base or earlier stage; ran_before is read when the step runs),
        # this stage's checkpoints were trained from the old one and resuming would keep them (a
        # finished run trains nothing more): it starts over. Otherwise it resumes, as an interrupted
        # stage should.
        step(
            f"stage{number}",
            _complete(stage_dir / "results.json", stage_dir / "best" / "config.json"),
            lambda n=number, r=recipe_path, m=start_model: train_stage(n, r, out, m, fresh=ran_before),
        )
        stages.append(stage_result(number, recipe_path, out, start_model))
        results["stages"] = stages
        start_model = str(stage_dir / "best")

    last = len(configs)
    step(
        "model",
        _complete(out / "model" / "config.json"),
        lambda: copy_model(out / f"stage{last}" / "best", out / "model"),
    )

    onnx = out / "onnx"
    step(
        "export",
        _complete(*(onnx / name for name in (*export.ONNX_FILES, "parity.json"))),
        lambda: export.export_onnx(out / "model", onnx),
    )
    results["export"] = json.loads((onnx / "parity.json").read_text())

    int8_dir = out / "onnx-int8" if int8 else None
    results.pop("int8", None)
    if int8_dir:
        step("int8", _complete(int8_dir / "int8.json"), lambda: export.quantize_int8(onnx, int8_dir))
        results["int8"] = json.loads((int8_dir / "int8.json").read_text())

    evaluation_path = out / "evaluation.json"  # with every prediction; results.json gets the scores

    def evaluate() -> None:
        evaluation = evaluation_step(Path(configs[-1]), out, last, int8_dir)
        evaluation_path.write_text(json.dumps(evaluation, indent=2, ensure_ascii=False) + "\n")

    evaluated = evaluation_path.exists() and (
        not int8 or "int8_vs_fp32_f1" in json.loads(evaluation_path.read_text())
    )
    step("evaluation", evaluated, evaluate)
    evaluation = json.loads(evaluation_path.read_text())
    results["evaluation"] = {k: v for k, v in evaluation.items() if k != "predictions"}
    step("cards", False, lambda: write_cards(out, results, push_to_hub, smoke))
    results_path.write_text(json.dumps(results, indent=2) + "\n")

    if int8 and not evaluation.get("int8_gate_passed", False):
        raise GateError(
            f"int8 answers differ from fp32 answers: token F1 {evaluation['int8_vs_fp32_f1']:.3f} < "
            f"{INT8_MIN_F1} on {evaluation['examples']} validation questions; not publishing. Try other "
            "quantizer settings (training.export.quantize_int8) or publish without int8 (--no-int8)."
        )
    if push_to_hub:
        for upload in uploads(out, push_to_hub, int8):
            done = push(upload, private=private, dry_run=dry_run)
            if dry_run:
                print(f"[dry run] would upload to https://huggingface.co/{done.listing()}")
            else:
                log.info("[pipeline] pushed %s", done.url)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", nargs="+", type=Path, help="one recipe per stage, in order")
    parser.add_argument("--output", type=Path, required=True, help="the release folder (OUT)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and data (default recipes: smoke_*)")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload ORG/NAME and ORG/NAME-onnx")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list, do not upload")
    parser.add_argument("--private", action="store_true", help="create the Hub repos as private")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 copy")
    args = parser.parse_args(argv)
    export.setup_logging()
    configs = args.config or (list(SMOKE_RECIPES) if args.smoke else None)
    if not configs:
        parser.error("--config RECIPE [RECIPE ...] is required (or --smoke)")
    missing = [str(c) for c in configs if not Path(c).is_file()]
    if missing:
        parser.error(f"recipe file(s) not found: {', '.join(missing)}")
    if args.push_to_hub and "/" not in args.push_to_hub:
        parser.error(f"--push-to-hub wants ORG/NAME, got {args.push_to_hub!r}")
    from training.data import DataUnavailableError

    start = time.perf_counter()
    try:
        run_pipeline(
            configs,
            args.output,
            smoke=args.smoke,
            int8=not args.no_int8,
            push_to_hub=args.push_to_hub,
            dry_run=args.dry_run,
            private=args.private,
        )
    except (
        GateError,
        export.ExportError,
        export.ParityError,
        ValueError,
        OSError,
        DataUnavailableError,
    ) as error:
        print(f"pipeline failed: {error}", file=sys.stderr)
        return 1
    log.info("[pipeline] finished in %.1f s: %s", time.perf_counter() - start, args.output / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
