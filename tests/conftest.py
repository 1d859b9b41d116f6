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


# --- the published export as it is: stock graph, made by the December 2022 optimum -------------------

# What tryolabs/long-t5-tglobal-base-blogpost-cqa-onnx holds at main (no generation_config.json).
PUBLISHED_ONNX_FILES = (
    "config.json",
    "encoder_model.onnx",
    "decoder_model.onnx",
    "decoder_with_past_model.onnx",
    "added_tokens.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "quantize.py",
    "README.md",
)


@pytest.fixture(scope="session")
def stock_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny model exported without the fused attention (LongT5's graph as optimum exports it)."""
    from training.export import export_onnx

    # The stock graph fails under one global block (32 tokens here): the gate checks longer inputs.
    out = tmp_path_factory.mktemp("stock") / "onnx"
    return export_onnx(tiny_dir / "model", out, fast_attention=False, parity_lengths=(40, 300))


@pytest.fixture(scope="session")
def published_like_dir(stock_dir: Path, tmp_path_factory) -> Path:
    """A folder shaped like the published ONNX repo: exactly PUBLISHED_ONNX_FILES, a stock graph, and a
    with-past decoder as the December 2022 optimum wrote it (it also declares encoder_hidden_states, unread,
    and passes the cross-attention cache through as present.*.encoder.* outputs)."""
    out = tmp_path_factory.mktemp("published")
    for name in PUBLISHED_ONNX_FILES:
        if (stock_dir / name).is_file():
            shutil.copy(stock_dir / name, out / name)
    (out / "added_tokens.json").write_text('{"<A>": 32102, "<Q>": 32101, "||": 32100}\n')
    (out / "spiece.model").write_bytes(b"placeholder: the runtime reads tokenizer.json only")
    (out / "quantize.py").write_text("# the script the original authors quantized with\n")
    (out / "README.md").write_text("---\nlicense: apache-2.0\n---\n# An ONNX export\n")
    declare_like_december_2022_optimum(out / "decoder_with_past_model.onnx", out / "decoder_model.onnx")
    assert sorted(p.name for p in out.iterdir()) == sorted(PUBLISHED_ONNX_FILES)
    return out


def declare_like_december_2022_optimum(with_past: Path, first_step: Path) -> None:
    """Make a with-past decoder declare ``encoder_hidden_states`` (as the first-step decoder declares it,
    unused) and output ``present.*.encoder.*`` (the cross-attention cache it reads, passed through)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(with_past))
    graph = model.graph
    declared = {i.name for i in graph.input}
    assert "encoder_hidden_states" not in declared, "today's optimum declares no encoder_hidden_states here"
    hidden = next(i for i in onnx.load(str(first_step)).graph.input if i.name == "encoder_hidden_states")
    graph.input.append(hidden)
    for past in [i for i in graph.input if i.name.startswith("past_key_values.") and ".encoder." in i.name]:
        present = "present." + past.name.removeprefix("past_key_values.")
        graph.node.append(helper.make_node("Identity", [past.name], [present], name=f"passthrough_{present}"))
        graph.output.append(helper.make_tensor_value_info(present, past.type.tensor_type.elem_type, None))
    onnx.save(model, str(with_past))
