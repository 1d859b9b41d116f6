"""training/evaluate.py: scoring a PyTorch checkpoint and its ONNX export on the same questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import load_examples, write_smoke_datasets
from training.evaluate import evaluate_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_validation(tmp_path_factory) -> list[dict]:
    files = write_smoke_datasets(tmp_path_factory.mktemp("smoke-data"))
    return load_examples("coqa", files["coqa_dev"], "validation")[:6]


def test_pytorch_evaluation_writes_predictions_and_metrics(tiny_dir, smoke_validation, tmp_path):
    result = evaluate_model(tiny_dir / "model", smoke_validation, max_new_tokens=5, out=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [e["id"] for e in smoke_validation]
    assert all(isinstance(row["prediction"], str) and row["answers"] for row in rows)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["examples"] == 6 and metrics["runtime"] == "pytorch"
    assert metrics["f1"] == pytest.approx(100 * sum(row["f1"] for row in rows) / 6)
    assert result["f1"] == metrics["f1"] and len(result["predictions"]) == 6


def test_batched_and_one_at_a_time_pytorch_answers_agree(tiny_dir, smoke_validation):
    one = evaluate_model(tiny_dir / "model", smoke_validation, max_new_tokens=5, batch_size=1)
    batched = evaluate_model(tiny_dir / "model", smoke_validation, max_new_tokens=5, batch_size=6)
    assert [p["prediction"] for p in one["predictions"]] == [p["prediction"] for p in batched["predictions"]]


@pytest.mark.slow
def test_pytorch_and_onnx_give_the_same_greedy_answers(tiny_dir, smoke_validation):
    pytest.importorskip("cqa.generator")
    torch_result = evaluate_model(tiny_dir / "model", smoke_validation, max_new_tokens=8)
    onnx_result = evaluate_model(tiny_dir / "onnx", smoke_validation, onnx=True, max_new_tokens=8)
    torch_answers = [p["prediction"] for p in torch_result["predictions"]]
    assert [p["prediction"] for p in onnx_result["predictions"]] == torch_answers
    assert any(torch_answers)  # a random model still says something: the comparison is not vacuous
    assert onnx_result["runtime"] == "onnxruntime" and onnx_result["f1"] == torch_result["f1"]


def test_long_inputs_are_cut_by_the_apps_rule(tiny_dir):
    from transformers import AutoTokenizer

    from cqa.format import build_model_input
    from training.evaluate import fit_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model").backend_tokenizer
    text = build_model_input(" ".join(["the blog post"] * 300), [("what?", "a post")], "how long?")
    fitted = fit_text(tokenizer, text, 100)
    assert len(tokenizer.encode(fitted).ids) <= 100
    assert fitted.endswith(" || <Q1> what? <A1> a post <Q> how long? <A> ")
    assert fit_text(tokenizer, "short || <Q> q <A> ", 100) == "short || <Q> q <A> "


@pytest.mark.slow
def test_cli_scores_a_dataset_file(tiny_dir, tmp_path):
    files = write_smoke_datasets(tmp_path / "data")
    done = subprocess.run(
        [
            sys.executable, "-m", "training.evaluate", "--model", str(tiny_dir / "model"),
            "--dataset", "squad_v2", "--file", str(files["squad_v2_dev"]), "--limit", "3",
            "--max-new-tokens", "4", "--out", str(tmp_path / "eval"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 3
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 3

    missing = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--model", str(tiny_dir / "model"), "--dataset", "coqa",
         "--file", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert missing.returncode != 0 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr
