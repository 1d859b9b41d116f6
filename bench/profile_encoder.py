"""Encoder-only timing and ONNX Runtime op-type profile, several encoder files compared in one run.

    python bench/profile_encoder.py ENCODER.onnx [ENCODER.onnx ...] [--tokens 4096] [--runs 3]
                                    [--threads 2] [--profile]

The files' timed runs are interleaved (A B A B ...), so a busy machine slows all of them alike.
With --profile, one extra profiled run per file prints the time per op type (profiled runs are
slower than plain ones; read the shares, not the totals).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cqa.generator import session_options


def session(path: Path, threads: int, profile: bool = False, spin: bool = True) -> ort.InferenceSession:
    options = session_options(threads)  # the app's, so that the profile is the app's
    if not spin:  # idle threads sleep instead of spinning: CPU time then measures work, not waiting
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = f"/tmp/ort-profile-{path.stem}"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encoder_feed(tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(3, 32_000, size=(1, tokens), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def op_type_table(profile_json: str) -> list[tuple[str, float, int]]:
    """(op type, seconds, calls) from an ONNX Runtime profile, slowest first."""
    events = json.loads(Path(profile_json).read_text())
    seconds: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            seconds[op] += event["dur"] / 1e6
            calls[op] += 1
    return sorted(((op, s, calls[op]) for op, s in seconds.items()), key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("encoders", type=Path, nargs="+")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="also report process CPU time with thread spinning off: a work measure that a busy, shared "
        "machine disturbs far less than wall time",
    )
    args = parser.parse_args(argv)

    feed = encoder_feed(args.tokens)
    sessions = {path: session(path, args.threads, spin=not args.cpu_time) for path in args.encoders}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    times: dict[Path, list[float]] = {path: [] for path in args.encoders}
    cpu: dict[Path, list[float]] = {path: [] for path in args.encoders}
    outputs = {}
    for _ in range(args.runs):
        for path, s in sessions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[path] = s.run(None, feed)[0]
            times[path].append(time.perf_counter() - start)
            cpu[path].append(time.process_time() - start_cpu)

    first = args.encoders[0]
    print(f"encoder at {args.tokens} tokens, {args.threads} threads, {args.runs} interleaved runs")
    for path in args.encoders:
        diff = float(np.abs(outputs[path] - outputs[first]).max())
        t = times[path]
        print(
            f"  {path}: median {statistics.median(t):.3f} s (min {min(t):.3f}, max {max(t):.3f}); "
            f"max |diff| vs first {diff:.2e}"
            + (f"; CPU time median {statistics.median(cpu[path]):.3f} s" if args.cpu_time else "")
        )

    if args.profile:
        del sessions
        for path in args.encoders:
            s = session(path, args.threads, profile=True)
            s.run(None, feed)
            start = time.perf_counter()
            s.run(None, feed)
            total = time.perf_counter() - start
            table = op_type_table(s.end_profiling())  # both runs: halve
            print(f"\nprofile of {path} (one profiled run {total:.2f} s; kernel time per op type):")
            kernel_total = sum(row[1] for row in table) / 2
            for op, secs, calls in table[:16]:
                share = 100 * secs / 2 / kernel_total
                print(f"  {op:<28} {secs / 2:7.3f} s  {share:5.1f}%  {calls // 2:5d} calls")


if __name__ == "__main__":
    main()
