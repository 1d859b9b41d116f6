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
    int8                 OUT/onnx/*_quantized.onnx: dynamic int8 copies beside the fp32 files; int8.json
                         (greedy agreement and logit error against fp32)
    evaluation           fp32 and int8 ONNX answers on the last stage's validation questions: F1/EM
                         against the gold answers, and token F1 of int8 against fp32 (gate: >= 0.95);
                         every answer in OUT/evaluation.json
    cards                README.md in OUT/model and OUT/onnx from model_card.md
    push                 --push-to-hub ORG/NAME: OUT/model -> ORG/NAME; OUT/onnx (fp32 and int8 files) ->
                         ORG/NAME-onnx. With --dry-run: the file list only.

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
from dataclasses import dataclass
from pathlib import Path

from training import export
from training.publish import Upload, folder_files, push, render_card
from training.recipe import Recipe

log = logging.getLogger("training.pipeline")

RECIPES = Path(__file__).resolve().parent / "recipes"
SMOKE_RECIPES = (RECIPES / "smoke_stage1.yaml", RECIPES / "smoke_stage2.yaml")
INT8_MIN_F1 = 0.95  # token F1 of int8 answers against fp32 answers, on the validation questions
MODEL_FILES_LEFT_OUT = ("training_args.bin",)  # a pickle of the trainer's arguments: not for the Hub


class GateError(RuntimeError):
    """A release gate failed (int8 answers too far from fp32); nothing is pushed."""


# ------------------------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class Step:
    """One step of the release: skipped when its outputs are complete and no earlier step ran.

    ``run`` is told whether an earlier step ran in this call (a training stage then starts over);
    ``complete`` replaces the outputs check when a step needs more than files existing."""

    name: str
    outputs: tuple[Path, ...]
    run: Callable[[bool], object]
    complete: Callable[[], bool] | None = None

    def is_complete(self) -> bool:
        return self.complete() if self.complete else all(path.exists() for path in self.outputs)


def stage_recipes(configs: Sequence[str | Path], out: Path, start_model: str | None) -> list[Recipe]:
    """Each stage's recipe, loaded once: OUT/stageN as output_dir, resuming from its last checkpoint,
    stage 1 from ``start_model`` (when given) and stage N+1 from stage N's best checkpoint."""
    from training.recipe import load_recipe

    recipes = []
    for number, path in enumerate(configs, 1):
        overrides: dict = {"output_dir": str(out / f"stage{number}"), "resume_from_checkpoint": True}
        model = start_model if number == 1 else str(out / f"stage{number - 1}" / "best")
        if model:
            overrides["model"] = model
        recipes.append(load_recipe(path, **overrides))
    return recipes


def train_stage(number: int, recipe: Recipe, fresh: bool = False) -> None:
    """Train one stage into its output_dir (OUT/stageN), resuming from its last checkpoint if there is
    one; ``fresh``: remove OUT/stageN first and start over (its checkpoints came from an older start)."""
    from training.train import train

    stage_dir = Path(recipe.training_args.output_dir)
    if fresh and stage_dir.exists():
        log.info("[pipeline] stage%d: an earlier step ran, so %s is stale: starting over", number, stage_dir)
        shutil.rmtree(stage_dir)
    train(recipe)


def stage_result(number: int, recipe: Recipe, config: str | Path | None = None) -> dict:
    """What results.json records of a finished stage: its recipe's settings and training.train's result
    (read from OUT/stageN/results.json, so stages trained elsewhere, e.g. with accelerate launch, count)."""
    result = json.loads((Path(recipe.training_args.output_dir) / "results.json").read_text())
    summary = _recipe_summary(recipe, result.get("world_size"))
    return {"name": f"stage{number}", "recipe": str(config), **summary, **result}


def _recipe_summary(recipe: Recipe, processes: int | None = None) -> dict:
    """The recipe's settings the card shows; batch_size is the examples per optimizer step, counting
    every process the stage ran on (results.json's world_size; 1 when it does not say)."""
    from training.train import examples_per_optimizer_step

    model, data, args = recipe
    return {
        "model": model.model,
        "data": " + ".join(spec.name for spec in data.train_datasets),
        "learning_rate": args.learning_rate,
        "batch_size": examples_per_optimizer_step(
            args.per_device_train_batch_size, args.gradient_accumulation_steps, processes or 1
        ),
        "max_input_tokens": data.max_input_length,
        "num_train_epochs": args.num_train_epochs,
    }


def copy_model(best: Path, model_dir: Path) -> None:
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best, staging, ignore=shutil.ignore_patterns(*MODEL_FILES_LEFT_OUT))
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)


def evaluation_step(recipe: Recipe, onnx_dir: Path, int8: bool) -> dict:
    """fp32 (and int8) answers of the ONNX export through the app's runtime (training.evaluation) on the
    last stage's validation questions, as its trainer saw them; the int8 gate."""
    from training.data import load_dataset_examples, resolve_smoke_files
    from training.evaluation import evaluate_model
    from training.metrics import score

    model, data, args = recipe
    specs = resolve_smoke_files(data.eval_datasets, args.output_dir)
    examples = [e for spec in specs for e in load_dataset_examples(spec, data.no_answer, data.split_seed)]
    options = {
        "onnx": True,
        "max_new_tokens": model.eval_max_new_tokens,
        "max_input_length": data.max_input_length,
        "turns": data.turns,
    }
    fp32 = [p["prediction"] for p in evaluate_model(onnx_dir, examples, **options)["predictions"]]
    gold = [e["answers"] for e in examples]
    result = {
        "dataset": " + ".join(f"{s.name} {s.split}" for s in specs),
        "examples": len(examples),
        "onnx_fp32": score(fp32, gold),
    }
    answers_int8 = None
    if int8:
        predictions = evaluate_model(onnx_dir, examples, quantized=True, **options)["predictions"]
        answers_int8 = [p["prediction"] for p in predictions]
        agreement = score(answers_int8, [[answer] for answer in fp32])  # fp32's answer as the only gold
        result["onnx_int8"] = score(answers_int8, gold)
        result["int8_vs_fp32_f1"] = agreement["f1"] / 100
        result["int8_vs_fp32_exact"] = agreement["exact"] / 100
        result["int8_gate_passed"] = result["int8_vs_fp32_f1"] >= INT8_MIN_F1
    result["predictions"] = [
        {"id": e["id"], "gold": e["answers"], "fp32": fp32[i], "int8": answers_int8[i] if int8 else None}
        for i, e in enumerate(examples)
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
    int8 = (out / "onnx" / "int8.json").exists() and "int8" in results
    variants = {"model": "PyTorch", "onnx": "ONNX, fp32 and dynamic int8" if int8 else "ONNX"}
    for folder, variant in variants.items():
        if (out / folder).is_dir():
            (out / folder / "README.md").write_text(render_card({**fields, "variant": variant}))


# -------------------------------------------------------------------------------------------- pipeline


def uploads(out: Path, repo_id: str, int8: bool = True) -> list[Upload]:
    """ORG/NAME gets OUT/model; ORG/NAME-onnx gets OUT/onnx, its int8 files (*_quantized.onnx) included
    unless ``int8`` is off."""
    int8_files = [] if int8 else ["*_quantized.onnx", "int8.json"]
    return [
        Upload(repo_id, folder_files(out / "model")),
        Upload(f"{repo_id}-onnx", folder_files(out / "onnx", leave_out=int8_files)),
    ]


def release_steps(
    configs: Sequence[str | Path],
    out: Path,
    recipes: Sequence[Recipe],
    *,
    smoke: bool,
    int8: bool,
    repo_id: str | None = None,
) -> list[Step]:
    """The release as data: every step with the outputs that make it complete and what runs it."""
    from training.tiny import save_tiny

    onnx, last = out / "onnx", len(recipes)
    steps = []
    if smoke:  # stage 1's starting point: a tiny random LongT5 with the T5-layout tokenizer
        base = out / "base"
        steps.append(Step("base", (base / "model" / "config.json",), lambda _: save_tiny(base, onnx=False)))
    for number, recipe in enumerate(recipes, 1):
        stage = out / f"stage{number}"
        # If an earlier step ran (a new base or earlier stage), this stage's checkpoints were trained
        # from the old one and resuming would keep them (a finished run trains nothing more): it starts
        # over. Otherwise it resumes, as an interrupted stage should.
        steps.append(
            Step(
                f"stage{number}",
                (stage / "results.json", stage / "best" / "config.json"),
                lambda earlier_ran, n=number, r=recipe: train_stage(n, r, fresh=earlier_ran),
            )
        )
    best = out / f"stage{last}" / "best"
    steps.append(Step("model", (out / "model" / "config.json",), lambda _: copy_model(best, out / "model")))
    export_files = (*(onnx / name for name in export.ONNX_FILES), onnx / "parity.json")
    steps.append(Step("export", export_files, lambda _: export.export_onnx(out / "model", onnx)))
    if int8:
        int8_files = (onnx / "int8.json", *(onnx / name for name in export.QUANTIZED_FILES))
        steps.append(Step("int8", int8_files, lambda _: export.quantize_int8(onnx)))
    evaluation = out / "evaluation.json"  # with every prediction; results.json gets the scores

    def evaluate(_) -> None:
        result = evaluation_step(recipes[-1], onnx, int8)
        evaluation.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    def evaluated() -> bool:  # the int8 figures too, when int8 is on
        return evaluation.exists() and (not int8 or "int8_vs_fp32_f1" in json.loads(evaluation.read_text()))

    steps.append(Step("evaluation", (evaluation,), evaluate, complete=evaluated))

    def cards(_) -> None:
        write_cards(out, collect_results(out, recipes, configs, int8), repo_id, smoke)

    steps.append(Step("cards", (), cards, complete=lambda: False))  # cheap: always rewritten
    return steps


def collect_results(out: Path, recipes: Sequence[Recipe], configs: Sequence[str | Path], int8: bool) -> dict:
    """The figures of every finished step, read from the files the steps wrote."""
    results: dict = {
        "stages": [stage_result(n, r, c) for n, (r, c) in enumerate(zip(recipes, configs, strict=True), 1)]
    }
    results["export"] = json.loads((out / "onnx" / "parity.json").read_text())
    if int8:
        results["int8"] = json.loads((out / "onnx" / "int8.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())
    results["evaluation"] = {k: v for k, v in evaluation.items() if k != "predictions"}
    return results


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
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    results: dict = {"smoke": smoke, "configs": [str(c) for c in configs], "steps": previous.get("steps", {})}
    recipes = stage_recipes(configs, out, str(out / "base" / "model") if smoke else None)

    earlier_ran = False  # once a step runs, every later step runs too (its inputs changed)
    for step in release_steps(configs, out, recipes, smoke=smoke, int8=int8, repo_id=push_to_hub):
        if step.is_complete() and not earlier_ran:
            log.info("[pipeline] %-10s skipped: outputs complete", step.name)
            results["steps"][step.name] = {**results["steps"].get(step.name, {}), "skipped": True}
            continue
        log.info("[pipeline] %-10s running", step.name)
        start = time.perf_counter()
        step.run(earlier_ran)
        seconds = round(time.perf_counter() - start, 2)
        earlier_ran = True
        results["steps"][step.name] = {"seconds": seconds, "skipped": False}
        results_path.write_text(json.dumps(results, indent=2) + "\n")  # progress survives a crash
        log.info("[pipeline] %-10s done in %.1f s", step.name, seconds)

    results.update(collect_results(out, recipes, configs, int8))
    results_path.write_text(json.dumps(results, indent=2) + "\n")

    evaluation = results["evaluation"]
    if int8 and not evaluation.get("int8_gate_passed", False):
        raise GateError(
            f"int8 answers differ from fp32 answers: token F1 {evaluation['int8_vs_fp32_f1']:.3f} < "
            f"{INT8_MIN_F1} on {evaluation['examples']} validation questions; not publishing. Try other "
            "quantizer settings (training.export.Int8Settings) or publish without int8 (--no-int8)."
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
