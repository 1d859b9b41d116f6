"""The release pipeline: model cards, Hub upload plans (offline), and the whole --smoke path end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from training.pipeline import card_fields
from training.publish import Upload, folder_files, push, push_folder, render_card

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]\w*")


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_template_renders_with_nothing_known():
    card = render_card({})
    assert not PLACEHOLDER.search(card), PLACEHOLDER.search(card)
    assert "| stage 1 (SQuAD 2.0 + CoQA validation) | n/a | n/a |" in card
    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "text2text-generation"
    assert meta["base_model"] == "google/long-t5-tglobal-base"
    assert meta["license"] and meta["language"] == ["en"]
    assert "rajpurkar/squad_v2" in meta["datasets"] and "stanfordnlp/coqa" in meta["datasets"]
    for license_text in ("CC BY-SA 4.0", "CC BY 4.0", "MSR-LA"):
        assert license_text in card


def test_card_shows_the_run_numbers():
    stage1 = dict(name="stage1", f1=74.2912, exact=61.5, epochs=3.0, best_step=1200, seconds=5400)
    stage1.update(data="squad_v2 + coqa", learning_rate=0.0001, batch_size=16, max_input_tokens=4096)
    stage2 = dict(name="stage2", f1=54.77, exact=None, epochs=166.0, best_step=830, seconds=600)
    settings = {"weight_type": "QInt8", "per_channel": True, "op_types": ["MatMul"]}
    results = {
        "stages": [stage1, stage2],
        "export": {"lengths": [8, 40], "max_relative_error": [3e-7, 4.2e-7]},
        "int8": {"agreement": 0.8, "settings": settings},
        "evaluation": {"int8_vs_fp32_f1": 0.9731},
    }
    card = render_card({**card_fields(results, "me/cqa", smoke=False), "variant": "ONNX"})
    assert not PLACEHOLDER.search(card)
    assert "| stage 1 (SQuAD 2.0 + CoQA validation) | 74.29 | 61.50 |" in card
    assert "| stage 2 (TryoCoQA validation, 15% of the conversations, split seed 42) | 54.77 | n/a |" in card
    assert "| best step | 1200 | 830 |" in card and "| training time | 90.0 min | 10.0 min |" in card
    assert "4.2e-07" in card and "8, 40" in card and "80%" in card and "0.973" in card
    assert "# me/cqa (ONNX)" in card and "me/cqa-onnx" in card
    assert "Smoke-test model" not in card
    assert "Smoke-test model" in render_card(card_fields({}, None, smoke=True))


def test_examples_per_step_count_every_process(tmp_path):
    """Stage 1 on 2 GPUs: 4 per device x 4 accumulated x 2 processes = 32 per optimizer step, on the card."""
    from training.pipeline import stage_recipes, stage_result

    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "results.json").write_text(json.dumps({"f1": 70.0, "world_size": 2, "examples_per_step": 32}))
    (recipe,) = stage_recipes([REPO / "training" / "recipes" / "stage1.yaml"], tmp_path, None)
    result = stage_result(1, recipe)
    assert result["batch_size"] == 32
    card = render_card(card_fields({"stages": [result]}, "me/cqa", smoke=False))
    assert "| batch size (examples per optimizer step, all GPUs) | 32 |" in card
    (stage / "results.json").write_text(json.dumps({"f1": 70.0}))  # an older run: its processes unknown
    assert stage_result(1, recipe)["batch_size"] == 16


def test_upload_plan_offline(tmp_path):
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    (folder / "encoder_model.onnx").write_bytes(b"x" * 2_000_000)
    (folder / ".cache").write_text("bookkeeping, not for the Hub")
    planned = push_folder(folder, "org/name-onnx", dry_run=True)
    assert [name for _, name in planned.files] == ["README.md", "encoder_model.onnx"]
    assert "org/name-onnx: 2 files, 2.00 MB" in planned.listing()

    # The int8 files sit beside the fp32 ones under optimum's names, and go up under those names.
    int8 = tmp_path / "int8"
    int8.mkdir()
    (int8 / "encoder_model_quantized.onnx").write_bytes(b"y" * 1000)
    (int8 / "int8.json").write_text("{}")
    assert [name for _, name in folder_files(int8)] == ["encoder_model_quantized.onnx", "int8.json"]
    assert folder_files(int8, leave_out=["*_quantized.onnx", "int8.json"]) == []

    with pytest.raises(ValueError, match="not a Hub repo id"):
        push_folder(folder, "no-slash", dry_run=True)
    with pytest.raises(FileNotFoundError, match=r"README\.md"):
        push(Upload("org/name", folder_files(int8)), dry_run=True)
    with pytest.raises(FileNotFoundError, match="nothing to upload"):
        folder_files(tmp_path / "missing")


def _run_pipeline(*args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training.pipeline", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.perf_counter() - start


@pytest.mark.slow
def test_smoke_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "smoke"
    done, _ = _run_pipeline("--smoke", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["stage1", "stage2"]
    for stage in results["stages"]:
        for key in ("f1", "exact", "epochs", "best_step", "seconds"):
            assert stage[key] is not None, (stage["name"], key)
    assert results["export"]["passed"] and results["export"]["lengths"] == [8, 40, 300, 1500, 5000]
    assert 0.0 <= results["int8"]["agreement"] <= 1.0
    evaluation = results["evaluation"]
    assert evaluation["examples"] > 0 and evaluation["int8_gate_passed"]
    assert evaluation["int8_vs_fp32_f1"] >= 0.95
    predictions = json.loads((out / "evaluation.json").read_text())["predictions"]
    assert len(predictions) == evaluation["examples"] and all(p["int8"] is not None for p in predictions)

    for folder in ("model", "onnx"):
        card = (out / folder / "README.md").read_text()
        assert not PLACEHOLDER.search(card), folder
        assert "Smoke-test model" in card
        assert f"{results['stages'][1]['f1']:.2f}" in card  # the real stage-2 F1
        assert f"{max(results['export']['max_relative_error']):.1e}" in card
    assert (out / "model" / "model.safetensors").is_file()
    assert not (out / "model" / "training_args.bin").exists()
    int8_files = ("encoder_model_quantized.onnx", "decoder_with_past_model_quantized.onnx", "int8.json")
    assert all((out / "onnx" / name).is_file() for name in int8_files)
    for step in ("base", "stage1", "stage2", "model", "export", "int8", "evaluation", "cards"):
        assert re.search(rf"\[pipeline\] {step}\s+done in [0-9.]+ s", done.stderr), step

    # Again, with an upload plan: every step is skipped and nothing touches the network.
    again, seconds = _run_pipeline("--smoke", "--output", str(out), "--push-to-hub", "x/y", "--dry-run")
    assert again.returncode == 0, again.stderr[-3000:]
    for step in ("stage1", "stage2", "model", "export", "int8", "evaluation"):
        assert re.search(rf"\[pipeline\] {step}\s+skipped", again.stderr), step
    assert seconds < 60
    assert "would upload to https://huggingface.co/x/y:" in again.stdout
    assert "would upload to https://huggingface.co/x/y-onnx:" in again.stdout
    for name in (
        "model.safetensors",
        "decoder_with_past_model.onnx",
        "encoder_model_quantized.onnx",
        "README.md",
    ):
        assert name in again.stdout
    assert "# x/y (PyTorch)" in (out / "model" / "README.md").read_text()

    # OUT/onnx serves in the app, as `python app.py --model OUT/onnx` runs it.
    from gradio_client import Client

    from app import DEFAULT_DOCUMENT, build_app
    from cqa.documents import load_document_file
    from cqa.generator import Seq2SeqGenerator

    generator = Seq2SeqGenerator.load(out / "onnx", threads=1, quantized=None)
    demo = build_app(generator, load_document_file(DEFAULT_DOCUMENT), max_input_tokens=1000)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        outputs = client.predict("How many conversations are in TryoCoQA?", api_name="/chat")
        details = next(o for o in outputs if isinstance(o, dict) and "model_input" in o)  # the answer's
    finally:
        demo.close()
    assert details["done"] and details["output_tokens"] > 0
    assert details["text"] == generator.generate(details["model_input"]).text

    # Stage 1 loses its results.json (as if interrupted): it resumes from its last checkpoint, and
    # stage 2, redone because stage 1 ran, starts over instead of resuming from its old checkpoints.
    # Those are marked here (+0.001): resuming from them would put the marked weights in OUT/model.
    import torch
    from safetensors.torch import load_file, save_file

    first_run = {p: load_file(p) for p in (out / "stage2").glob("*/model.safetensors")}  # best/, checkpoints
    assert len(first_run) >= 2
    for path, weights in first_run.items():
        save_file({name: t + 1e-3 for name, t in weights.items()}, path, metadata={"format": "pt"})
    (out / "stage1" / "results.json").unlink()
    redo, _ = _run_pipeline("--smoke", "--no-int8", "--output", str(out))  # int8: covered above
    assert redo.returncode == 0, redo.stderr[-3000:]
    resumed = re.findall(r"resuming from (\S+)", redo.stderr)
    assert len(resumed) == 1 and Path(resumed[0]).parent == out / "stage1", resumed  # stage 1 only
    assert "stage2: an earlier step ran" in redo.stderr
    for step in ("stage1", "stage2", "model", "export", "evaluation"):
        assert re.search(rf"\[pipeline\] {step}\s+done in", redo.stderr), step
    # Retrained from the same start with the same seed: the first run's stage-2 weights again.
    first_run[out / "model" / "model.safetensors"] = first_run[out / "stage2" / "best" / "model.safetensors"]
    for path, weights in first_run.items():
        again = load_file(path)
        assert again.keys() == weights.keys()
        for name, tensor in weights.items():
            assert torch.allclose(again[name], tensor, atol=1e-6, rtol=0), (path, name)


def test_pipeline_cli_rejects_bad_arguments(tmp_path):
    from training.pipeline import main

    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path)])  # neither --config nor --smoke
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "missing.yaml"), "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--smoke", "--output", str(tmp_path), "--push-to-hub", "noslash"])
