"""Alternatives for the two kernels that bound an answer, timed interleaved in one run (bench/NOTES.md, 7).

    python bench/kernels.py [--tokens 4096] [--runs 7]

1. One encoder layer's block attention at LongT5-base shapes: the export's fused ONNX ``Attention`` (fp32)
   against the same math unfused in fp32, and with int8 scores (``DynamicQuantizeLinear`` on the queries and
   keys, ``MatMulInteger``; softmax and values in fp32).
2. One decoder step's cross-attention over all 12 layers: the fp32 key/value cache (what the export does)
   against an fp16 cache and an int8 cache (per-key scales, integer products).
Each alternative's output is compared with the fp32 one (mean per-row cosine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cqa.generator import session_options

LAYERS, HEADS, D_KV, BLOCK, GLOBAL_BLOCK = 12, 12, 64, 128, 16
F32, F16, I8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8


def _session(nodes: list, inputs: list[str], opset: int, types: dict[str, int] | None = None):
    types = types or {}
    graph = helper.make_graph(
        nodes,
        "kernel",
        [helper.make_tensor_value_info(name, types.get(name, F32), None) for name in inputs],
        [helper.make_tensor_value_info(name, types.get(name, F32), None) for name in ["out"]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), session_options(2), ["CPUExecutionProvider"])


def attention_cases(tokens: int, rng: np.random.Generator) -> dict:
    blocks, keys, hidden = tokens // BLOCK, 3 * BLOCK + tokens // GLOBAL_BLOCK, HEADS * D_KV
    q = rng.standard_normal((blocks, BLOCK, hidden), dtype=np.float32)
    k = rng.standard_normal((blocks, keys, hidden), dtype=np.float32) * 0.3
    v = rng.standard_normal((blocks, keys, hidden), dtype=np.float32)
    bias = rng.standard_normal((blocks, HEADS, BLOCK, keys), dtype=np.float32)
    fused = _session(
        [
            helper.make_node(
                "Attention", ["q", "k", "v", "b"], ["out"], q_num_heads=HEADS, kv_num_heads=HEADS, scale=1.0
            )
        ],
        ["q", "k", "v", "b"],
        23,
    )
    head_major = [  # (blocks, tokens, heads, d) -> (blocks, heads, tokens, d); keys as (.., d, tokens)
        helper.make_node("Transpose", ["q"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v"], ["vh"], perm=[0, 2, 1, 3]),
    ]
    tail = [
        helper.make_node("Add", ["s", "b"], ["sb"]),
        helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["oh"]),
        helper.make_node("Transpose", ["oh"], ["out"], perm=[0, 2, 1, 3]),
    ]
    unfused = _session(
        [*head_major, helper.make_node("MatMul", ["qh", "kt"], ["s"]), *tail], list("qkvb"), 17
    )
    int8_scores = [
        helper.make_node("DynamicQuantizeLinear", ["qh"], ["qq", "qs", "qz"]),
        helper.make_node("DynamicQuantizeLinear", ["kt"], ["kq", "ks", "kz"]),
        helper.make_node("MatMulInteger", ["qq", "kq", "qz", "kz"], ["si"]),
        helper.make_node("Cast", ["si"], ["sf"], to=F32),
        helper.make_node("Mul", ["qs", "ks"], ["scale"]),
        helper.make_node("Mul", ["sf", "scale"], ["s"]),
    ]
    int8 = _session([*head_major, *int8_scores, *tail], list("qkvb"), 17)
    split = {"q": q.reshape(blocks, BLOCK, HEADS, D_KV), "k": k.reshape(blocks, keys, HEADS, D_KV)}
    split |= {"v": v.reshape(blocks, keys, HEADS, D_KV), "b": bias}
    return {
        "fused fp32 Attention (the export)": (fused, {"q": q, "k": k, "v": v, "b": bias}),
        "unfused fp32": (unfused, split),
        "unfused, int8 scores": (int8, split),
    }


def cross_attention_cases(tokens: int, rng: np.random.Generator) -> dict:
    q = rng.standard_normal((1, HEADS, 1, D_KV), dtype=np.float32)
    keys = [rng.standard_normal((1, HEADS, D_KV, tokens), dtype=np.float32) for _ in range(LAYERS)]
    values = [rng.standard_normal((1, HEADS, tokens, D_KV), dtype=np.float32) for _ in range(LAYERS)]

    def graph(dtype: int) -> tuple:
        nodes = [helper.make_node("Cast", ["q"], ["qc"], to=dtype)]
        for i in range(LAYERS):
            nodes += [
                helper.make_node("MatMul", ["qc", f"k{i}"], [f"s{i}"]),
                helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
                helper.make_node("MatMul", [f"p{i}", f"v{i}"], [f"o{i}"]),
            ]
        nodes.append(helper.make_node("Concat", [f"o{i}" for i in range(LAYERS)], ["oc"], axis=0))
        nodes.append(helper.make_node("Cast", ["oc"], ["out"], to=F32))
        names = ["q"] + [f"{kind}{i}" for i in range(LAYERS) for kind in "kv"]
        session = _session(nodes, names, 17, {n: dtype for n in names[1:]})
        np_type = np.float16 if dtype == F16 else np.float32
        feed = {"q": q} | {f"k{i}": keys[i].astype(np_type) for i in range(LAYERS)}
        return session, feed | {f"v{i}": values[i].astype(np_type) for i in range(LAYERS)}

    # int8: keys with one scale per (head, key), values one per (head, channel); the queries and the
    # probabilities quantized per call (uint8), integer products, scales applied to the small outputs.
    nodes = [helper.make_node("DynamicQuantizeLinear", ["q"], ["qq", "qs", "qz"])]
    feed: dict[str, np.ndarray] = {"q": q}
    types: dict[str, int] = {}
    for i in range(LAYERS):
        key_scale = np.abs(keys[i]).max(2, keepdims=True) / 127
        value_scale = np.abs(values[i]).max(2, keepdims=True) / 127
        feed |= {f"k{i}": np.round(keys[i] / key_scale).astype(np.int8), f"ks{i}": key_scale}
        feed |= {f"v{i}": np.round(values[i] / value_scale).astype(np.int8), f"vs{i}": value_scale}
        types |= {f"k{i}": I8, f"v{i}": I8}
        nodes += [
            helper.make_node("MatMulInteger", ["qq", f"k{i}", "qz"], [f"si{i}"]),
            helper.make_node("Cast", [f"si{i}"], [f"sf{i}"], to=F32),
            helper.make_node("Mul", [f"ks{i}", "qs"], [f"kss{i}"]),
            helper.make_node("Mul", [f"sf{i}", f"kss{i}"], [f"s{i}"]),
            helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
            helper.make_node("DynamicQuantizeLinear", [f"p{i}"], [f"pq{i}", f"ps{i}", f"pz{i}"]),
            helper.make_node("MatMulInteger", [f"pq{i}", f"v{i}", f"pz{i}"], [f"oi{i}"]),
            helper.make_node("Cast", [f"oi{i}"], [f"of{i}"], to=F32),
            helper.make_node("Mul", [f"vs{i}", f"ps{i}"], [f"vss{i}"]),
            helper.make_node("Mul", [f"of{i}", f"vss{i}"], [f"o{i}"]),
        ]
    nodes.append(helper.make_node("Concat", [f"o{i}" for i in range(LAYERS)], ["out"], axis=0))
    int8 = _session(nodes, list(feed), 17, types)
    return {
        "fp32 cache (the export)": graph(F32),
        "fp16 cache": graph(F16),
        "int8 cache": (int8, feed),
    }


def compare(title: str, cases: dict, runs: int) -> None:
    values = {
        name: {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()}
        for name, (_, feed) in cases.items()
    }
    outputs = {name: s.run_with_ort_values(None, values[name])[0].numpy() for name, (s, _) in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (session, _) in cases.items():
            start = time.perf_counter()
            session.run_with_ort_values(None, values[name])
            times[name].append(time.perf_counter() - start)
    reference = next(iter(outputs.values())).reshape(-1, D_KV * HEADS).astype(np.float64)
    print(title)
    for name, out in outputs.items():
        out = out.reshape(reference.shape).astype(np.float64)
        cosine = (
            (out * reference).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(reference, axis=-1)
        ).mean()
        t = times[name]
        median, best = 1e3 * statistics.median(t), 1e3 * min(t)
        print(f"  {name:<36} median {median:7.1f} ms  min {best:7.1f}  cos {cosine:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    compare(
        f"one encoder layer's attention, {args.tokens} tokens:", attention_cases(args.tokens, rng), args.runs
    )
    compare(
        f"one decoder step's cross-attention, 12 layers, {args.tokens} tokens:",
        cross_attention_cases(args.tokens, rng),
        args.runs,
    )


if __name__ == "__main__":
    main()
