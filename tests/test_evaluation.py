"""training/evaluation.py: scoring a PyTorch checkpoint and its ONNX export on the same questions."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.official_formats import coqa_file, coqa_story, squad_file

from training.data import load_examples, write_smoke_datasets
from training.evaluation import evaluate_model

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
    torch_result = evaluate_model(tiny_dir / "model", smoke_validation, max_new_tokens=8)
    onnx_result = evaluate_model(tiny_dir / "onnx", smoke_validation, onnx=True, max_new_tokens=8)
    torch_answers = [p["prediction"] for p in torch_result["predictions"]]
    assert [p["prediction"] for p in onnx_result["predictions"]] == torch_answers
    assert any(torch_answers)  # a random model still says something: the comparison is not vacuous
    assert onnx_result["runtime"] == "onnxruntime" and onnx_result["f1"] == torch_result["f1"]


def test_long_inputs_are_cut_by_the_apps_rule(tiny_dir):
    from transformers import AutoTokenizer

    from training.data import fit_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model").backend_tokenizer
    long = {
        "context": " ".join(["the blog post"] * 300),
        "history": [("what?", "a post")],
        "question": "how long?",
    }
    fitted = fit_example(tokenizer, long, 100).text
    assert len(tokenizer.encode(fitted).ids) <= 100
    assert fitted.endswith(" || <Q1> what? <A1> a post <Q> how long? <A> ")
    short = {"context": "short", "history": [], "question": "q"}
    assert fit_example(tokenizer, short, 100).text == "short || <Q> q <A> "


@pytest.mark.slow
def test_cli_scores_a_dataset_file(tiny_dir, tmp_path):
    files = write_smoke_datasets(tmp_path / "data")
    done = subprocess.run(
        [
            sys.executable, "-m", "training.evaluation", "--model", str(tiny_dir / "model"),
            "--dataset", "squad_v2", "--file", str(files["squad_v2_dev"]), "--limit", "3",
            "--max-new-tokens", "4", "--out", str(tmp_path / "eval"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 3
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 3

    missing = subprocess.run(
        [sys.executable, "-m", "training.evaluation", "--model", str(tiny_dir / "model"), "--dataset", "coqa",
         "--file", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert missing.returncode != 0 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr


STORY = "Anna lives in Paris. She rides a red bike. Her dog is called Max."


def _official_format_file(dataset: str, directory: Path) -> tuple[Path, int]:
    """A small official-format dev file whose FIRST question is unanswerable; (path, questions)."""
    if dataset == "squad_v2":
        qas = [
            ("q1", "How old is Anna?", []),
            ("q2", "Where does Anna live?", ["Paris", "in Paris"]),
            ("q3", "What does she ride?", ["a red bike"]),
        ]
        return squad_file(directory / "dev-v2.0.json", [(STORY, qas), (STORY, [("q4", "Why?", [])])]), 4
    turns = [("How old is she?", "unknown"), ("Where does she live?", "Paris"), ("Her dog?", "Max")]
    stories = [
        coqa_story("3dr2", STORY, turns, "mctest", additional=[["unknown", "in Paris", "Max"]]),
        coqa_story("story_b", STORY, turns[1:], "reddit", additional=[["Paris", "max"]]),
    ]
    return coqa_file(directory / "coqa-dev-v1.0.json", stories), 5


@pytest.mark.parametrize("dataset", ["squad_v2", "coqa"])
def test_official_predictions_are_scored_by_the_metrics_cli(dataset, tiny_dir, tmp_path, caplog, capsys):
    from training import evaluation, metrics

    data, questions = _official_format_file(dataset, tmp_path)
    model = str(tiny_dir / "model")
    # The random model's answer to the first question plays the no-answer text, so that the mapping
    # to the official no-answer ("" for SQuAD 2.0, "unknown" for CoQA) is exercised.
    first = load_examples(dataset, data, "validation")[:1]
    no_answer = evaluate_model(model, first, max_new_tokens=4)["predictions"][0]["prediction"]
    assert no_answer  # a random model still says something
    caplog.set_level("INFO", logger="training.evaluation")
    out = tmp_path / "eval"
    evaluation.main(
        ["--model", model, "--dataset", dataset, "--file", str(data), "--max-new-tokens", "4",
         "--no-answer", no_answer, "--out", str(out)]
    )  # fmt: skip

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    official = json.loads((out / "official_predictions.json").read_text())
    expected = [metrics.to_official_answer(row["prediction"], dataset, no_answer) for row in rows]
    no_answer_official = "" if dataset == "squad_v2" else "unknown"
    assert expected[0] == no_answer_official
    if dataset == "squad_v2":
        assert official == {row["id"]: answer for row, answer in zip(rows, expected, strict=True)}
        assert set(official) == {"q1", "q2", "q3", "q4"}
    else:
        assert [(p["id"], p["turn_id"]) for p in official] == [
            ("3dr2", 1), ("3dr2", 2), ("3dr2", 3), ("story_b", 1), ("story_b", 2)
        ]  # fmt: skip
        assert [p["answer"] for p in official] == expected

    # The logged command is the one that scores the file.
    command = next(r.getMessage() for r in caplog.records if "official scoring:" in r.getMessage())
    argv = shlex.split(command.split("official scoring: ", 1)[1])
    assert argv[:3] == ["python", "-m", "training.metrics"]
    assert argv[3:] == [dataset, str(data), str(out / "official_predictions.json")]
    capsys.readouterr()
    result = metrics.main(argv[3:])
    assert json.loads(capsys.readouterr().out) == result
    if dataset == "squad_v2":
        assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (questions, 2, 2)
        no_answers_right = sum(official[q] == "" for q in ("q1", "q4"))
        assert no_answers_right >= 1 and result["NoAns_exact"] == 100 * no_answers_right / 2
    else:
        assert result["overall"]["turns"] == questions
        assert (result["children_stories"]["turns"], result["reddit"]["turns"]) == (3, 2)
        assert result["children_stories"]["em"] > 0  # turn 1: "unknown" against two "unknown" golds


def test_tryocoqa_is_scored_on_the_split_the_model_was_trained_with(tiny_dir, tmp_path, caplog):
    """training.train records the validation conversations in results.json; evaluate reads them back,
    so it never scores conversations the model trained on (whatever seed the run used)."""
    import shutil

    from training.data import tryocoqa_validation_ids
    from training.evaluation import main

    tryocoqa = write_smoke_datasets(tmp_path / "data")["tryocoqa"]
    default = tryocoqa_validation_ids(tryocoqa)
    recorded = [i for i in ("0", "5", "6") if i not in default][:2]
    stage = tmp_path / "stage2"
    shutil.copytree(tiny_dir / "model", stage / "best")
    (stage / "results.json").write_text(json.dumps({"split": {"seed": 7, "validation_ids": recorded}}))
    caplog.set_level("INFO", logger="training.evaluation")

    def conversations(model: Path, out: str) -> set[str]:
        args = ["--model", str(model), "--dataset", "tryocoqa", "--file", str(tryocoqa)]
        main([*args, "--max-new-tokens", "2", "--out", str(tmp_path / out)])
        rows = (tmp_path / out / "predictions.jsonl").read_text().splitlines()
        return {json.loads(row)["id"].rsplit("_", 1)[0] for row in rows}

    assert conversations(stage / "best", "recorded") == set(recorded)
    assert any("split recorded in" in r.getMessage() and "(seed 7)" in r.getMessage() for r in caplog.records)
    assert conversations(tiny_dir / "model", "default") == set(default)  # no record: the fixed seed
