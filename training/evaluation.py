"""Score a model on a QA dataset: a PyTorch checkpoint (transformers) or an ONNX export (the app's runtime).

    python -m training.evaluation --model out/stage2/best --dataset tryocoqa --split validation --out eval/pt
    python -m training.evaluation --model out/onnx --onnx --quantized --dataset tryocoqa --out eval/int8
    python -m training.evaluation --model out/stage1/best --dataset squad_v2 --file dev-v2.0.json \
        --out eval/squad

Writes OUT/predictions.jsonl (id, prediction, answers, f1, exact) and OUT/metrics.json (exact, f1 in
percent, the number of examples, timings). Decoding is greedy, as in the app; inputs longer than
--max-input-length lose the end of their context (cqa.format.fit_model_input, the app's rule).
The F1/exact here are training.metrics.score, the figure training selects by (SQuAD 2.0 rules: max over
gold answers, the no-answer text scored as the official empty answer). For SQuAD 2.0 and CoQA it also
writes OUT/official_predictions.json in the official scorer's format (the no-answer text mapped back to
"" / "unknown") and logs the command that scores it:

    python -m training.metrics squad_v2 dev-v2.0.json eval/squad/official_predictions.json

TryoCoQA is one file split by conversation: the split a model was trained with is read from the
results.json beside the model (OUT/stageN/results.json for OUT/stageN/best; a pipeline's OUT/results.json
for OUT/model or OUT/onnx), so the validation conversations are the ones it never trained on. Without
one, the fixed split seed (--split-seed, default 42) decides, as in training.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from cqa.format import DEFAULT_MAX_INPUT_TOKENS, DEFAULT_TURNS, NO_ANSWER
from training.data import DATASETS, fit_example

logger = logging.getLogger("training.evaluation")


class TorchAnswerer:
    """Greedy answers from a PyTorch checkpoint with transformers' generate, a batch at a time."""

    def __init__(self, model: str | Path, batch_size: int = 1):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(model)).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.batch_size = batch_size
        self.backend_tokenizer = self.tokenizer.backend_tokenizer

    def answer(self, texts: list[str], max_new_tokens: int) -> list[str]:
        from training.model import decode

        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            generated = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
            )
        return decode(self.tokenizer, generated.cpu().numpy())


class OnnxAnswerer:
    """Greedy answers through the app's ONNX Runtime generator (one input at a time, as in the app)."""

    batch_size = 1

    def __init__(self, model: str | Path, quantized: bool = False):
        from cqa.generator import ModelLoadError, Seq2SeqGenerator

        try:
            self.generator = Seq2SeqGenerator.load(model, quantized=quantized)
        except ModelLoadError as error:  # its message says which model, why, and how to fix it
            raise ValueError(str(error)) from error
        self.backend_tokenizer = self.generator.tokenizer

    def answer(self, texts: list[str], max_new_tokens: int) -> list[str]:
        return [self.generator.generate(text, max_new_tokens).text.strip() for text in texts]


def evaluate_model(
    model: str | Path,
    examples: Sequence[dict],
    *,
    onnx: bool = False,
    quantized: bool = False,
    max_new_tokens: int = 128,
    max_input_length: int = DEFAULT_MAX_INPUT_TOKENS,
    turns: int = DEFAULT_TURNS,
    batch_size: int = 1,
    out: str | Path | None = None,
) -> dict:
    """Answer every example (training.data's structured examples: id, context, history, question,
    answers) and score the answers. Inputs are built and cut by training.data.fit_example, as in training.

    Returns {"exact", "f1" (percent), "examples", "seconds", "seconds_per_example", "model", "runtime",
    "predictions": [{"id", "prediction", "answers", "exact", "f1"}]}; with ``out``, also writes
    OUT/predictions.jsonl and OUT/metrics.json (the same without the predictions).
    """
    from training.metrics import SCORE_NAME, answer_scores, score

    if quantized and not onnx:
        raise ValueError("--quantized applies to an ONNX export: add --onnx")
    answerer = OnnxAnswerer(model, quantized) if onnx else TorchAnswerer(model, batch_size)
    texts = [fit_example(answerer.backend_tokenizer, e, max_input_length, turns).text for e in examples]
    predictions: list[str] = []
    started = time.perf_counter()
    with tqdm(total=len(examples), desc="answering", unit="question") as progress:
        for start in range(0, len(texts), answerer.batch_size):
            chunk = texts[start : start + answerer.batch_size]
            predictions += answerer.answer(chunk, max_new_tokens)
            progress.update(len(chunk))
    seconds = time.perf_counter() - started

    references = [list(e["answers"]) for e in examples]
    metrics = {
        **score(predictions, references),
        "metric": SCORE_NAME,
        "examples": len(examples),
        "seconds": seconds,
        "seconds_per_example": seconds / max(1, len(examples)),
        "model": str(model),
        "runtime": ("onnxruntime int8" if quantized else "onnxruntime") if onnx else "pytorch",
        "max_new_tokens": max_new_tokens,
        "max_input_length": max_input_length,
    }
    rows = [
        {
            "id": example["id"],
            "prediction": prediction,
            "answers": golds,
            **answer_scores(prediction, golds),
        }
        for example, prediction, golds in zip(examples, predictions, references, strict=True)
    ]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info(
        "%s (%s): f1=%.2f exact=%.2f on %d examples, %.2f s each",
        model,
        metrics["runtime"],
        metrics["f1"],
        metrics["exact"],
        len(examples),
        metrics["seconds_per_example"],
    )
    return {**metrics, "predictions": rows}


def write_official_predictions(
    out: str | Path,
    dataset: str,
    rows: Sequence[dict],
    data_file: str | Path | None = None,
    no_answer: str = NO_ANSWER,
) -> Path | None:
    """Write OUT/official_predictions.json for ``python -m training.metrics`` (SQuAD 2.0, CoQA) and log
    the command that scores it; ``rows`` are evaluate_model's predictions. Returns the path, or None
    when the dataset has no official scorer or its ids cannot be matched to the official file."""
    from training.metrics import official_predictions

    if dataset not in ("squad_v2", "coqa"):
        return None
    if dataset == "coqa" and data_file is None:
        # Hub rows have no story id (training.data names them split-row), so the official file's
        # stories could not be matched.
        logger.warning(
            "CoQA from the Hub has no story ids: pass --file coqa-dev-v1.0.json for official scores"
        )
        return None
    predictions = official_predictions(
        dataset, [row["id"] for row in rows], [row["prediction"] for row in rows], no_answer
    )
    path = Path(out) / "official_predictions.json"
    path.write_text(json.dumps(predictions, indent=2, ensure_ascii=False))
    # SQuAD from the Hub: the ids are the official ones, so the official file scores it
    data = shlex.quote(str(data_file)) if data_file else "dev-v2.0.json"
    logger.info(
        "official scoring: python -m training.metrics %s %s %s", dataset, data, shlex.quote(str(path))
    )
    return path


def recorded_split(model: str | Path) -> tuple[dict, Path] | None:
    """The train/validation split a model was trained with ({"seed", "validation_ids"}) and the
    results.json it was read from: the stage's (beside OUT/stageN/best) or a pipeline's (its last
    stage). None when there is no such file (a Hub id, a model copied elsewhere)."""
    for candidate in (Path(model).parent / "results.json", Path(model).parent.parent / "results.json"):
        if not candidate.is_file():
            continue
        try:
            results = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        stages = results.get("stages") or [results]
        split = stages[-1].get("split") if isinstance(stages[-1], dict) else None
        if isinstance(split, dict) and split.get("validation_ids"):
            return split, candidate
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="a checkpoint directory or Hub id (an ONNX export with --onnx)"
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--file", help="the dataset in its official format (default: its official home)")
    parser.add_argument("--split", default="validation", choices=["train", "validation"])
    parser.add_argument("--onnx", action="store_true", help="run the ONNX export through the app's runtime")
    parser.add_argument("--quantized", action="store_true", help="the int8 ONNX files (with --onnx)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-input-length", type=int, default=DEFAULT_MAX_INPUT_TOKENS)
    parser.add_argument("--batch-size", type=int, default=1, help="PyTorch only (ONNX answers one at a time)")
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--turns", type=int, default=DEFAULT_TURNS, help="previous Q/A pairs in each input")
    parser.add_argument("--no-answer", default=NO_ANSWER, help="the model's answer to unanswerable questions")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="TryoCoQA's train/validation split seed (default: the split recorded in the results.json "
        "beside the model, else 42)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="predictions.jsonl, metrics.json (and official_predictions.json)",
    )
    args = parser.parse_args(argv)
    if args.quantized and not args.onnx:
        parser.error("--quantized needs --onnx")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from training.data import TRYOCOQA_SPLIT_SEED, load_examples

    split_seed, validation_ids = args.split_seed, None
    recorded = recorded_split(args.model) if args.dataset == "tryocoqa" and split_seed is None else None
    if recorded:
        (split, where), validation_ids = recorded, recorded[0]["validation_ids"]
        logger.info(
            "TryoCoQA split recorded in %s (seed %s): validation conversations %s",
            where,
            split.get("seed"),
            validation_ids,
        )
    try:
        examples = load_examples(
            args.dataset,
            args.file,
            args.split,
            no_answer=args.no_answer,
            split_seed=TRYOCOQA_SPLIT_SEED if split_seed is None else split_seed,
            validation_ids=validation_ids,
        )
        if args.limit:
            examples = examples[: args.limit]
        if not examples:
            raise ValueError(f"{args.dataset} {args.split} has no examples")
        result = evaluate_model(
            args.model,
            examples,
            onnx=args.onnx,
            quantized=args.quantized,
            max_new_tokens=args.max_new_tokens,
            max_input_length=args.max_input_length,
            turns=args.turns,
            batch_size=args.batch_size,
            out=args.out,
        )
        official = write_official_predictions(
            args.out, args.dataset, result["predictions"], args.file, args.no_answer
        )
        if official and args.limit:
            logger.warning(
                "--limit %d: the official scorer counts the unanswered questions as wrong", args.limit
            )
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    metrics = {k: v for k, v in result.items() if k != "predictions"}
    print(json.dumps(metrics, indent=2))
    print(f"predictions and metrics written to {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
