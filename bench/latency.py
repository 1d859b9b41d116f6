"""Answer latency on CPU: PyTorch vs optimum's ONNX Runtime path vs the project's runtime (fp32, int8).

    python bench/latency.py [--context-tokens 1024 4096 7000] [--runs 3] [--new-tokens 24] [--threads 2]
                            [--cache-dir .cache/bench] [--variants ...] [--quick]

Builds once (cached under --cache-dir) a random-weight model with the exact shapes of
google/long-t5-tglobal-base plus the three added tokens, exports it with the project's own export
(stock graph, and with training.onnx_patches' fast attention), quantizes to int8, then times every
variant in its own subprocess (so its peak RSS is its own), one context length at a time so that the
variants of one length run back to back. Each measurement: one warm-up answer, then --runs timed answers
with exactly --new-tokens new tokens, greedy. The last lines, one per length, are the app's default
configuration against PyTorch fp32:

    context=4096 runtime_median_s=X pytorch_fp32_median_s=Y speedup=Y/X
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# google/long-t5-tglobal-base's shapes (config.json on the Hub); weights are random (seeded).
BASE_SHAPES = dict(
    d_model=768,
    d_ff=2048,
    d_kv=64,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    local_radius=127,
    global_block_size=16,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
)
# --quick: same structure, small enough to build, export and run in a couple of minutes.
QUICK_SHAPES = dict(
    BASE_SHAPES, d_model=128, d_ff=256, d_kv=32, num_layers=2, num_decoder_layers=2, num_heads=4
)

PARITY_LENGTHS = (8, 300, 1500)  # export gate lengths used here (the release export checks up to 5000)
DEFAULT_VARIANT = "runtime-int8"  # the app's default configuration (see bench/NOTES.md)
ALL_VARIANTS = (
    "pytorch-fp32",  # reference: transformers generate
    "optimum-fp32",  # the original app's path: stock export + ORTModelForSeq2SeqLM (use_merged=False)
    "runtime-fp32",  # cqa runtime on the fast-attention export
    "runtime-int8",  # same, int8 weights
    "runtime-int8-stock",  # cqa runtime on the stock export, int8 (what the patch buys)
    "runtime-int8-reuse",  # runtime-int8 with glibc told to keep freed memory (REUSE_MEMORY_ENV)
)
# glibc settings that keep freed memory for reuse instead of handing it back to the system: one heap for
# all threads, no mmap'd blocks, no trimming. Without them every answer's large buffers (attention-sized,
# 60-280 MB) are fresh pages that the kernel zeroes, ~500k page faults per answer at 4,096 tokens. A Space
# sets them as variables (they must be in the environment when the process starts). bench/NOTES.md, 7.
REUSE_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967295"}

QUESTION = "What does the post say about the speed of the model?"
_FILLER = (
    "Long documents are split into blocks of tokens, and every token attends to its neighbours and to a "
    "summary of each block. This keeps the cost of attention close to linear in the length of the input, "
    "which is what makes answering questions about a whole blog post possible on a small machine. "
)


@dataclass
class Paths:
    root: Path
    model: Path
    stock: Path  # the stock export; int8 files next to the fp32 ones as *_quantized.onnx (optimum's names)
    fast: Path  # the export with training.onnx_patches' fast attention, same layout


def paths_for(cache_dir: Path, quick: bool) -> Paths:
    root = cache_dir / ("longt5-quick-seed0" if quick else "longt5-base-random-seed0")
    return Paths(root, root / "model", root / "onnx-stock", root / "onnx-fast")


# ----------------------------------------------------------------------------- building (cached)


def _done(directory: Path, stamp: str = "") -> bool:
    marker = directory / ".complete"
    return marker.exists() and marker.read_text() == stamp


def _mark_done(directory: Path, stamp: str = "") -> None:
    (directory / ".complete").write_text(stamp)


def _export_stamp(fast: bool) -> str:
    """Changes when the code that makes an export changes, so a stale cached export is rebuilt."""
    sources = [REPO / "training" / "export.py"] + ([REPO / "training" / "onnx_patches.py"] if fast else [])
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()


def build_model(paths: Paths, quick: bool) -> None:
    if _done(paths.model):
        return
    from training.tiny import build_tiny_model, build_tokenizer

    print(f"building a random model with the base shapes in {paths.model}", flush=True)
    shutil.rmtree(paths.model, ignore_errors=True)
    build_tiny_model(0, **(QUICK_SHAPES if quick else BASE_SHAPES)).save_pretrained(paths.model)
    spiece = REPO.parent / "shared" / "data" / "t5-tokenizer" / "spiece.model"
    build_tokenizer(spiece if spiece.exists() else None).save_pretrained(paths.model)
    _mark_done(paths.model)


def export(paths: Paths, out: Path, fast: bool) -> None:
    if _done(out, _export_stamp(fast)):
        return
    from training.export import export_onnx

    print(f"exporting ({'fast attention' if fast else 'stock graph'}) to {out}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    # The release export with its parity gate at a few lengths (the long ones are slow in PyTorch).
    # The stock graph fails below 16 tokens (no global token: a Reshape to size 0), so its gate skips 8.
    lengths = PARITY_LENGTHS if fast else tuple(n for n in PARITY_LENGTHS if n >= 16)
    export_onnx(paths.model, out, fast_attention=fast, parity_lengths=lengths)
    _mark_done(out, _export_stamp(fast))


def quantize(export_dir: Path) -> None:
    """The int8 files next to the fp32 ones (X.onnx -> X_quantized.onnx), with the export's own function
    and settings, so the bench measures what `training.export --quantize int8` ships."""
    from training.export import INT8_SETTINGS, ONNX_FILES, quantize_file, quantized_name

    marker = export_dir / ".int8-complete"
    if marker.exists() and marker.read_text() == repr(INT8_SETTINGS):
        return
    print(f"quantizing {export_dir} ({INT8_SETTINGS})", flush=True)
    for name in ONNX_FILES:
        quantize_file(export_dir / name, export_dir / quantized_name(name), INT8_SETTINGS)
    marker.write_text(repr(INT8_SETTINGS))  # other settings later: quantized again


def prepare(paths: Paths, quick: bool, variants: list[str]) -> None:
    """Build what ``variants`` need (each step cached)."""
    build_model(paths, quick)
    if any(v == "optimum-fp32" or v.endswith("-stock") for v in variants):
        export(paths, paths.stock, fast=False)
    if any(v.startswith("runtime") and not v.endswith("-stock") for v in variants):
        export(paths, paths.fast, fast=True)
    if "runtime-int8-stock" in variants:
        quantize(paths.stock)
    if any(v.startswith("runtime-int8") and not v.endswith("-stock") for v in variants):
        quantize(paths.fast)


# ----------------------------------------------------------------------------- one variant (worker)


def make_input(tokenizer, context_tokens: int) -> str:
    """A model input (project format) whose context is exactly ``context_tokens`` tokens long."""
    from cqa.format import build_model_input

    ids = tokenizer(_FILLER * (context_tokens // 20 + 10), add_special_tokens=False).input_ids
    context = tokenizer.decode(ids[:context_tokens], skip_special_tokens=True)
    return build_model_input(context, [], QUESTION)


class _Timer:
    """Accumulates the wall time spent inside a wrapped callable (the encoder)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _hf_answer_fn(variant: str, paths: Paths, threads: int, new_tokens: int):
    """(answer(text) -> (seconds, encoder_seconds, input_tokens, output_tokens)) for the HF-style paths."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(paths.model)
    timer = _Timer()
    if variant == "pytorch-fp32":
        from transformers import LongT5ForConditionalGeneration

        model = LongT5ForConditionalGeneration.from_pretrained(paths.model).eval()
        encoder = model.get_encoder()
        encoder.forward = timer.wrap(encoder.forward)
    else:
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        from cqa.generator import session_options  # the app's options, so only the graph path differs

        model = ORTModelForSeq2SeqLM.from_pretrained(
            paths.stock, use_cache=True, use_merged=False, session_options=session_options(threads)
        )
        model.encoder.forward = timer.wrap(model.encoder.forward)

    def answer(text: str):
        inputs = tokenizer(text, return_tensors="pt")
        timer.seconds = 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1
            )
        seconds = time.perf_counter() - start
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        tokens = out.shape[1] - 1  # minus the decoder start token
        # No per-step hook here: decode time per token includes the first decoder step.
        return (
            seconds,
            timer.seconds,
            inputs.input_ids.shape[1],
            tokens,
            text,
            None,
            (seconds - timer.seconds) / tokens,
        )

    return tokenizer, answer, None


def _runtime_answer_fn(variant: str, paths: Paths, threads: int, new_tokens: int):
    from transformers import AutoTokenizer

    from cqa.generator import Seq2SeqGenerator

    directory = paths.stock if variant.endswith("-stock") else paths.fast
    generator = Seq2SeqGenerator.load(directory, threads=threads, quantized="int8" in variant)
    tokenizer = AutoTokenizer.from_pretrained(paths.model)

    def answer(text: str):
        start = time.perf_counter()
        steps = list(generator.stream(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens))
        seconds = time.perf_counter() - start
        first, result = steps[0], steps[-1]
        # Per-token decode after the first token (the first decoder step also projects the encoder
        # output into every layer's cross-attention keys/values, a one-off cost).
        later_tokens = result.output_tokens - first.output_tokens
        decode = (result.seconds - first.seconds) / later_tokens if later_tokens > 0 else float("nan")
        return (
            seconds,
            result.encoder_seconds,
            result.input_tokens,
            result.output_tokens,
            result.text,
            first.seconds,
            decode,
        )

    from cqa.format import DEFAULT_MAX_INPUT_TOKENS

    return tokenizer, answer, lambda: generator.warmup(DEFAULT_MAX_INPUT_TOKENS)  # as the app does


def peak_rss_mb() -> float:
    """This process's peak resident memory. (Not getrusage's ru_maxrss: Linux carries it over from the
    parent across fork and exec, so every worker would report at least the driver's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(variant: str, paths: Paths, context_tokens: int, runs: int, new_tokens: int, threads: int) -> dict:
    if variant.startswith("runtime"):
        tokenizer, answer, app_warmup = _runtime_answer_fn(variant, paths, threads, new_tokens)
    else:
        tokenizer, answer, app_warmup = _hf_answer_fn(variant, paths, threads, new_tokens)
    text = make_input(tokenizer, context_tokens)
    first_answer = None
    if app_warmup:  # the runtime: the app's own warm-up, then its first answer is timed like the rest
        app_warmup()
        first_answer = answer(text)[0]
    else:
        answer(text)  # warm-up at this length (PyTorch, optimum): their first runs are much slower
    measured = [answer(text) for _ in range(runs)]
    seconds = [m[0] for m in measured]
    encoder = [m[1] for m in measured]
    output_tokens = measured[0][3]
    decode = [m[6] for m in measured]
    first_token = [m[5] for m in measured if m[5] is not None]
    return {
        "variant": variant,
        "context_tokens": context_tokens,
        "input_tokens": measured[0][2],
        "output_tokens": output_tokens,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "first_answer_s": first_answer,
        "encoder_s": statistics.median(encoder),
        "decode_ms_per_token": 1000 * statistics.median(decode),
        "first_token_s": statistics.median(first_token) if first_token else None,
        "peak_rss_mb": peak_rss_mb(),
        "answer": measured[0][4],
    }


def encoder_cosine(export_dir: Path, paths: Paths, context_tokens: int, threads: int) -> float:
    """Mean per-token cosine similarity of the int8 encoder's output to the fp32 one's, on the bench input."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from cqa.generator import session_options

    tokenizer = AutoTokenizer.from_pretrained(paths.model)
    ids = np.array([tokenizer(make_input(tokenizer, context_tokens)).input_ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    outputs = []
    for name in ("encoder_model.onnx", "encoder_model_quantized.onnx"):
        options = session_options(threads)
        session = ort.InferenceSession(str(export_dir / name), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, feed)[0][0].astype(np.float64))
        del session
    fp32, int8 = outputs
    cosine = (fp32 * int8).sum(-1) / (np.linalg.norm(fp32, axis=-1) * np.linalg.norm(int8, axis=-1))
    return float(cosine.mean())


# ----------------------------------------------------------------------------- driver


def run_variant(args, variant: str, context_tokens: int) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--context-tokens",
        str(context_tokens),
        "--runs",
        str(args.runs),
        "--new-tokens",
        str(args.new_tokens),
        "--threads",
        str(args.threads),
        "--cache-dir",
        str(args.cache_dir),
    ] + (["--quick"] if args.quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    if variant.endswith("-reuse"):
        env.update(REUSE_MEMORY_ENV)
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(
        f"  {variant} at {context_tokens}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True
    )
    return None


def print_table(results: list[dict]) -> None:
    header = (
        f"{'context':>7} {'variant':<20} {'median s':>9} {'min s':>7} {'max s':>7} {'1st answer s':>12} "
        f"{'encoder s':>9} {'1st token s':>11} {'decode ms/tok':>13} {'peak RSS MB':>11} {'vs pytorch':>10} "
        f"{'x floor':>7} {'cos fp32':>8} {'same answer':>11}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    reference = {r["context_tokens"]: r for r in results if r["variant"] == "pytorch-fp32"}
    for r in results:
        ref = reference.get(r["context_tokens"])
        ratio = ref["median_s"] if ref else None
        same = ("yes" if r["answer"] == ref["answer"] else "NO") if ref else "-"
        speedup = f"{ratio / r['median_s']:.2f}x" if ratio else "-"
        first = f"{r['first_token_s']:.2f}" if r.get("first_token_s") is not None else "-"
        first_answer = f"{r['first_answer_s']:.2f}" if r.get("first_answer_s") is not None else "-"
        floor = f"{r['median_s'] / r['floor_s']:.2f}" if r.get("floor_s") else "-"
        cosine = f"{r['cosine']:.4f}" if r.get("cosine") is not None else "-"
        print(
            f"{r['context_tokens']:>7} {r['variant']:<20} {r['median_s']:>9.2f} {r['min_s']:>7.2f} "
            f"{r['max_s']:>7.2f} {first_answer:>12} {r['encoder_s']:>9.2f} {first:>11} "
            f"{r['decode_ms_per_token']:>13.1f} {r['peak_rss_mb']:>11.0f} {speedup:>10} {floor:>7} "
            f"{cosine:>8} {same:>11}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context-tokens", type=int, nargs="+", default=[1024, 4096, 7000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), help=f"any of {ALL_VARIANTS}")
    parser.add_argument("--quick", action="store_true", help="small model, short input: checks the script")
    parser.add_argument("--no-floor", action="store_true", help="skip the GEMM rates (~1 min a length)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    paths = paths_for(args.cache_dir.resolve(), args.quick)

    if args.worker:
        result = worker(args.worker, paths, args.context_tokens[0], args.runs, args.new_tokens, args.threads)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.quick and args.context_tokens == parser.get_default("context_tokens"):
        args.context_tokens, args.runs, args.new_tokens = [300], 1, 4
    prepare(paths, args.quick, args.variants)
    from cqa.generator import cpu_summary

    print(f"CPU: {cpu_summary()}; {args.threads} threads", flush=True)
    results, floors = [], []
    cosines: dict[tuple[Path, int], float] = {}  # one per export and length (int8 and int8-reuse share it)
    for context_tokens in args.context_tokens:
        floor_s = None
        if not (args.no_floor or args.quick):  # the floor is the base model's: meaningless for --quick
            import gemm_floor

            rates = gemm_floor.measure_rates(context_tokens, args.threads)
            floor_s = gemm_floor.answer_floor(context_tokens, args.new_tokens, rates).total_s
            floors.append(gemm_floor.describe(context_tokens, args.new_tokens, rates))
            print("  " + floors[-1], flush=True)
        for variant in args.variants:
            result = run_variant(args, variant, context_tokens)
            if result:
                result["floor_s"] = floor_s
                if "int8" in variant:
                    directory = paths.stock if variant.endswith("-stock") else paths.fast
                    key = (directory, context_tokens)
                    if key not in cosines:
                        cosines[key] = encoder_cosine(directory, paths, context_tokens, args.threads)
                    result["cosine"] = cosines[key]
                results.append(result)
                print(
                    f"  {variant} context={context_tokens}: median {result['median_s']:.2f} s "
                    f"(encoder {result['encoder_s']:.2f} s)",
                    flush=True,
                )
    print_table(results)
    print(
        "decode ms/tok: runtime = per token after the first (the first decoder step also computes the "
        "cross-attention keys/values); pytorch/optimum = (total - encoder) / tokens, first step included.\n"
        "1st answer s: the runtime's first answer right after the app's warm-up; median/min/max: the answers "
        "after it (PyTorch and optimum: after a warm-up answer at the same length).\n"
        "x floor: median / the floor below, measured in this run. cos fp32: mean per-token cosine of the "
        "int8 encoder's output to the fp32 encoder's."
    )
    for line in floors:
        print(line)
    print()
    by_key = {(r["variant"], r["context_tokens"]): r for r in results}
    for context_tokens in args.context_tokens:
        default = by_key.get((DEFAULT_VARIANT, context_tokens))
        reference = by_key.get(("pytorch-fp32", context_tokens))
        if default and reference:
            print(
                f"context={context_tokens} runtime_median_s={default['median_s']:.2f} "
                f"pytorch_fp32_median_s={reference['median_s']:.2f} "
                f"speedup={reference['median_s'] / default['median_s']:.2f}"
            )


if __name__ == "__main__":
    main()
