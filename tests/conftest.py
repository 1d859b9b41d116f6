"""Shared fixtures: tiny random LongT5 models (PyTorch + ONNX) built once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file from ../shared/data, or skip the test cleanly when it is not there."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared/data is optional)")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random LongT5 with a synthetic T5-layout tokenizer: DIR/model (PyTorch), DIR/onnx."""
    from training.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_real_tokenizer_dir(tmp_path_factory) -> Path:
    """Same, with the genuine T5 SentencePiece vocabulary from ../shared/data (skips without it)."""
    from training.tiny import save_tiny

    spiece = shared_file("t5-tokenizer/spiece.model")
    return save_tiny(tmp_path_factory.mktemp("tiny-real-tok"), spiece_model=spiece)


@pytest.fixture(scope="session")
def quantized_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny export plus dynamic-int8 copies named *_quantized.onnx, as optimum's quantizer names them.
    All of the quantizer's default op types, as optimum uses them: the fused attention must survive that."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("quantized")
    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, out / path.name)
    for name in ("encoder_model", "decoder_model", "decoder_with_past_model"):
        quantize_dynamic(out / f"{name}.onnx", out / f"{name}_quantized.onnx", weight_type=QuantType.QInt8)
    return out
