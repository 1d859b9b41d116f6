"""How fast can this CPU go? ONNX Runtime's GEMM rates, and the floor of a LongT5-base answer from them.

    python bench/gemm_floor.py [--tokens 4096] [--threads 2] [--new-tokens 24]

Times one MatMul of the encoder's shapes (tokens x 768 x 768, x 2048, 2048 x 768) in fp32 and as ONNX
Runtime's dynamic int8 (the kernels the int8 export runs), and one decode-shaped product (one row against
a 256 MB fp32 matrix: the rate at which a decoder step can read its cross-attention cache). From those:
the encoder's arithmetic (weight GEMMs in int8, attention products in fp32), the first decoder step (every
layer's cross-attention keys and values, int8), and each later token (its bytes at the read rate). No
answer can be faster than that floor on this machine, whatever the graph, short of doing less work.
`bench/latency.py` measures the rates in the same run as the answers and prints each variant's ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cqa.generator import session_options
from training.export import INT8_SETTINGS, quantize_file

D_MODEL, D_FF, LAYERS, HEADS, D_KV = 768, 2048, 12, 12, 64  # google/long-t5-tglobal-base
CPU = ["CPUExecutionProvider"]
BLOCK, GLOBAL_BLOCK = 128, 16  # local_radius + 1, global_block_size
# Bytes a later decoder step reads besides the cross-attention cache: its int8 weights (12 layers of
# self-attention, the cross-attention query/output and the gated-GELU feed-forward, and the LM head).
DECODER_STEP_WEIGHT_BYTES = LAYERS * (6 * D_MODEL * D_MODEL + 3 * D_MODEL * D_FF) + 32128 * D_MODEL


@dataclass(frozen=True)
class Rates:
    fp32_gmacs: float  # GMAC/s, encoder-shaped GEMMs
    int8_gmacs: float
    read_gbs: float  # GB/s, one row times a large fp32 matrix (the decode pattern)


@dataclass(frozen=True)
class Floor:
    encoder_weights_s: float
    encoder_attention_s: float
    first_step_s: float
    per_token_ms: float
    total_s: float


def _matmul_model(rows: int, inner: int, cols: int, path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((inner, cols)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def _best_seconds(session: ort.InferenceSession, feed: dict, runs: int = 7) -> float:
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return min(times)


def _read_rate(threads: int) -> float:
    """GB/s of a (1 x 768) x (768 x 87381) fp32 product: 256 MB read per run, as a decoder step reads."""
    cols = 256 * 2**20 // 4 // D_MODEL
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D_MODEL]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [D_MODEL, cols]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads), CPU)
    rng = np.random.default_rng(2)
    feed = {
        "x": rng.standard_normal((1, D_MODEL)).astype(np.float32),
        "w": ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((D_MODEL, cols)).astype(np.float32)),
    }
    return D_MODEL * cols * 4 / 1e9 / _best_seconds(session, feed)


def measure_rates(tokens: int = 4096, threads: int = 2, verbose: bool = False) -> Rates:
    """This CPU's fp32 and dynamic-int8 GEMM rates at the encoder's shapes, and its decode read rate."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process, once per file
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        for inner, cols in ((D_MODEL, D_MODEL), (D_MODEL, D_FF), (D_FF, D_MODEL)):
            fp32, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
            _matmul_model(tokens, inner, cols, fp32)
            quantize_file(fp32, int8, INT8_SETTINGS)  # the export's own int8 settings
            feed = {"x": np.random.default_rng(1).standard_normal((tokens, inner)).astype(np.float32)}
            gmac = tokens * inner * cols / 1e9
            line = f"  {tokens} x {inner} x {cols}:"
            for name, path in (("fp32", fp32), ("int8", int8)):
                session = ort.InferenceSession(str(path), session_options(threads), CPU)
                seconds = _best_seconds(session, feed)
                rates[name].append(gmac / seconds)
                line += f"  {name} {1e3 * seconds:6.1f} ms ({gmac / seconds:5.0f} GMAC/s)"
            if verbose:
                print(line, flush=True)
    read = _read_rate(threads)
    if verbose:
        print(f"  1 x {D_MODEL} x 87381 fp32 (256 MB read): {read:.1f} GB/s", flush=True)
    return Rates(float(np.mean(rates["fp32"])), float(np.mean(rates["int8"])), read)


def answer_floor(tokens: int, new_tokens: int, rates: Rates) -> Floor:
    """The least time an answer of ``new_tokens`` over ``tokens`` input tokens can take at ``rates``."""
    weights = LAYERS * tokens * (4 * D_MODEL * D_MODEL + 3 * D_MODEL * D_FF)  # q, k, v, o + gated-GELU
    keys = 3 * BLOCK + tokens // GLOBAL_BLOCK  # three local blocks + the global tokens, per query
    attention = LAYERS * HEADS * tokens * keys * D_KV * 2  # scores and values
    encoder_weights, encoder_attention = weights / 1e9 / rates.int8_gmacs, attention / 1e9 / rates.fp32_gmacs
    first_step = LAYERS * 2 * tokens * D_MODEL * D_MODEL / 1e9 / rates.int8_gmacs  # cross keys/values
    cache_bytes = LAYERS * 2 * tokens * D_MODEL * 4  # fp32 cross-attention keys and values
    per_token = (cache_bytes + DECODER_STEP_WEIGHT_BYTES) / 1e9 / rates.read_gbs
    total = encoder_weights + encoder_attention + first_step + (new_tokens - 1) * per_token
    return Floor(encoder_weights, encoder_attention, first_step, 1000 * per_token, total)


def describe(tokens: int, new_tokens: int, rates: Rates) -> str:
    f = answer_floor(tokens, new_tokens, rates)
    return (
        f"floor at {tokens} tokens, {new_tokens} new: encoder {f.encoder_weights_s:.2f} s (weight GEMMs at "
        f"int8's {rates.int8_gmacs:.0f} GMAC/s) + {f.encoder_attention_s:.2f} s (attention at fp32's "
        f"{rates.fp32_gmacs:.0f} GMAC/s), first decoder step {f.first_step_s:.2f} s, "
        f"{f.per_token_ms:.1f} ms per later token (read at {rates.read_gbs:.1f} GB/s) = {f.total_s:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads, best of 7")
    rates = measure_rates(args.tokens, args.threads, verbose=True)
    print(describe(args.tokens, args.new_tokens, rates))


if __name__ == "__main__":
    main()
