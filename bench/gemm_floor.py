"""How fast can this CPU go? ONNX Runtime's GEMM throughput, and the LongT5-base encoder's floor from it.

    python bench/gemm_floor.py [--tokens 4096] [--threads 2]

Times one MatMul of the encoder's shapes (tokens x 768 x 768, x 2048, 2048 x 768) in fp32 and as ONNX
Runtime's dynamic int8 (the kernels the int8 export runs), then prints what the encoder's arithmetic costs
at those rates: the weight GEMMs (int8 in the int8 export) and the attention products (fp32). No answer
can be faster than that floor on this machine, whatever the graph, short of doing less arithmetic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

D_MODEL, D_FF, LAYERS, HEADS, D_KV = 768, 2048, 12, 12, 64  # google/long-t5-tglobal-base
BLOCK, GLOBAL_BLOCK = 128, 16  # local_radius + 1, global_block_size


def matmul_model(rows: int, inner: int, cols: int, path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((inner, cols)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def best_seconds(path: Path, rows: int, inner: int, threads: int, runs: int = 7) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal((rows, inner)).astype(np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    n = args.tokens

    rates = {"fp32": [], "int8": []}  # GMAC/s per shape
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads, best of 7")
    with tempfile.TemporaryDirectory() as tmp:
        for inner, cols in ((D_MODEL, D_MODEL), (D_MODEL, D_FF), (D_FF, D_MODEL)):
            fp32, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
            matmul_model(n, inner, cols, fp32)
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)
            gmac = n * inner * cols / 1e9
            line = f"  {n} x {inner} x {cols}:"
            for name, path in (("fp32", fp32), ("int8", int8)):
                seconds = best_seconds(path, n, inner, args.threads)
                rates[name].append(gmac / seconds)
                line += f"  {name} {1e3 * seconds:6.1f} ms ({gmac / seconds:5.0f} GMAC/s)"
            print(line)
    fp32_rate, int8_rate = (float(np.mean(rates[k])) for k in ("fp32", "int8"))

    # The encoder's arithmetic at n tokens (multiply-accumulates).
    weights = LAYERS * n * (4 * D_MODEL * D_MODEL + 3 * D_MODEL * D_FF)  # q, k, v, o + gated-GELU FF
    keys = 3 * BLOCK + n // GLOBAL_BLOCK  # three local blocks + the global tokens, per query
    attention = LAYERS * HEADS * n * keys * D_KV * 2  # scores and values
    weight_floor, attention_floor = weights / 1e9 / int8_rate, attention / 1e9 / fp32_rate
    print(
        f"\nencoder at {n} tokens: weight GEMMs {weights / 1e9:.0f} GMAC, at int8's {int8_rate:.0f} GMAC/s "
        f"= {weight_floor:.2f} s; attention {attention / 1e9:.0f} GMAC, at fp32's {fp32_rate:.0f} GMAC/s = "
        f"{attention_floor:.2f} s"
    )
    print(f"floor tokens={n} encoder_int8_floor_s={weight_floor + attention_floor:.2f}")


if __name__ == "__main__":
    main()
