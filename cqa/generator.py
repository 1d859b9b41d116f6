"""Greedy seq2seq generation with ONNX Runtime: the serving path, without torch.

    generator = Seq2SeqGenerator.load("out/smoke/onnx")       # or a Hub repo id (the default)
    for answer in generator.stream(text):                     # text from cqa.format.build_model_input
        print(answer.text)

One call = one encoder run over the whole input, then one decoder step per new token:
the first step (``decoder_model``) computes the self-attention cache and, once per answer, the
cross-attention keys/values of the encoder output; later steps (``decoder_with_past_model``, or the
merged decoder's cache branch) take those back as ``past_key_values.*`` inputs. The caches stay
ONNX Runtime OrtValues from one step to the next, so nothing is copied through numpy except the
logits row that greedy decoding reads.

Each session is fed exactly the inputs it declares, in the dtypes it declares: the published export
(optimum, December 2022) declares ``encoder_hidden_states`` in its with-past decoder too, today's
optimum does not, and other exporters write int32 ids. ``fast_attention`` tells this project's fast
export (training/export.py) from a stock one, whose ``speed_notice`` says how to make a fast copy.

Greedy decoding here gives the same ids as transformers' ``generate(num_beams=1)`` (tests/test_generator.py
checks it from 2 to 1100 input tokens, with and without ``min_new_tokens``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tokenizers

from cqa.hub import (
    DEFAULT_MODEL_ID,
    FAST_EXPORT_COMMAND,
    FAST_EXPORT_FOLDER,
    ModelFiles,
    ModelLoadError,
    find_model_files,
    has_model_files,
    resolve_model_dir,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "FAST_EXPORT_COMMAND",
    "Answer",
    "ModelLoadError",
    "Seq2SeqGenerator",
    "cpu_features",
    "cpu_summary",
    "default_threads",
]

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


@dataclass(frozen=True)
class Answer:
    """One streaming step; the last one yielded (``done=True``) is the final answer."""

    text: str  # answer text so far (cumulative, special tokens skipped)
    input_tokens: int
    output_tokens: int  # generated tokens so far (end-of-sequence not counted)
    encoder_seconds: float
    seconds: float  # wall time since the call started
    done: bool


def _ort_value(array: np.ndarray) -> ort.OrtValue:
    # On CPU the OrtValue shares the array's memory (no copy) and holds a reference to the array.
    return ort.OrtValue.ortvalue_from_numpy(array)


def default_threads() -> int:
    """The CPU cores this process may really use.

    os.cpu_count() reports the host's cores; in a container (a Hugging Face Space has 2 vCPUs) that
    can be many more than the CPU quota, and oversubscribed ONNX Runtime threads are much slower.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 cores; "max 100000" = no quota
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


# The CPU flags that decide ONNX Runtime's kernels: VNNI and AMX run int8 GEMMs at about twice the AVX2 rate
# (bench/NOTES.md measured both kinds of machine), bf16 is for later. A Space does not say which CPU it got.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_features(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, bool]:
    """{flag: present} for CPU_FLAGS, from Linux's /proc/cpuinfo; all False where it cannot be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):  # one line per core, all alike: the first is enough
            flags = set(line.partition(":")[2].split())
            break
    return {flag: flag in flags for flag in CPU_FLAGS}


def cpu_summary(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """One line for logs and the page, e.g. ``x86_64, 2 cores, avx2 avx512_vnni (no avx512_bf16 amx)``."""
    features = cpu_features(cpuinfo)
    have = [flag for flag, present in features.items() if present]
    lack = [flag for flag, present in features.items() if not present]
    if not any(features.values()) and not Path(cpuinfo).is_file():
        flags = "CPU flags unknown (no /proc/cpuinfo)"
    else:
        flags = " ".join(have) or "none of " + " ".join(CPU_FLAGS)
        if have and lack:
            flags += f" (no {' '.join(lack)})"
    return f"{platform.machine() or 'unknown machine'}, {default_threads()} core(s) usable, {flags}"


def session_options(threads: int) -> ort.SessionOptions:
    """The options of every session: the one place to tune ONNX Runtime for CPU serving."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one request's graph is a chain; parallelism is inside the ops
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No memory arena: the arena keeps (and rounds up) the encoder's peak, which at 4-7k tokens is
    # hundreds of MB of attention scores. Measured (bench/NOTES.md, int8, LongT5-base shapes): peak RSS
    # 2.84 -> 2.24 GB at 4096 tokens, 4.76 -> 2.58 GB at 7000, same speed. Memory patterns stay on
    # (turning them off too saved ~0.3 GB more but cost ~1.6x in time).
    options.enable_cpu_mem_arena = False
    return options


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error}); re-export the model.") from error


# What this runtime can feed, by input name (past_key_values.* come from the previous step).
ENCODER_INPUTS = frozenset({"input_ids", "attention_mask"})
DECODER_INPUTS = frozenset({"input_ids", "encoder_attention_mask", "encoder_hidden_states"})


def _declared_inputs(
    session: ort.InferenceSession, path: Path, known: Collection[str], pasts: bool = False
) -> dict[str, str]:
    """{input name: ONNX type, e.g. "tensor(int64)"} of a session, or a ModelLoadError when it declares an
    input this runtime cannot feed (``known``, and ``past_key_values.*`` with ``pasts``) or no input_ids."""
    declared = {i.name: i.type for i in session.get_inputs()}
    unknown = [
        name for name in declared if name not in known and not (pasts and name.startswith("past_key_values."))
    ]
    if unknown:
        problem = f"declares inputs this runtime cannot feed ({', '.join(unknown)})"
    elif "input_ids" not in declared:
        problem = "has no input_ids input"
    else:
        return declared
    raise ModelLoadError(
        f"{path} {problem}; its inputs are {', '.join(declared)}. It is not an encoder-decoder export "
        "in optimum's layout; export the model again with `python -m training.export`."
    )


def _check_outputs(session: ort.InferenceSession, path: Path, needed: list[str]) -> None:
    missing = [name for name in needed if name not in {o.name for o in session.get_outputs()}]
    if missing:
        raise ModelLoadError(
            f"{path} lacks the outputs {', '.join(missing)} that the next decoding step needs; export the "
            "model again with `python -m training.export`."
        )


def _feed(declared: dict[str, str], values: dict[str, ort.OrtValue | np.ndarray]) -> dict[str, ort.OrtValue]:
    """The inputs one session declares, each in the dtype it declares (ids and masks may be int32 in one
    session and int64 in another; a matching array is shared, not copied)."""
    feed = {}
    for name, onnx_type in declared.items():
        value = values[name]
        dtype = _NUMPY_DTYPES.get(onnx_type)
        if isinstance(value, ort.OrtValue):
            if dtype is None or value.data_type() == onnx_type:
                feed[name] = value
                continue
            value = value.numpy()
        feed[name] = _ort_value(value if dtype is None or value.dtype == dtype else value.astype(dtype))
    return feed


class Seq2SeqGenerator:
    """An ONNX encoder-decoder with its tokenizer. Thread-safe: state lives in each call."""

    def __init__(
        self,
        model_id: str,
        model_dir: Path,
        files: ModelFiles,
        tokenizer: tokenizers.Tokenizer,
        threads: int,
        decoder_start_token_id: int,
        eos_token_ids: tuple[int, ...],
        pad_token_id: int = 0,
        min_encoder_tokens: int = 0,
    ) -> None:
        self.model_id = model_id
        self.model_dir = model_dir
        self.files = files
        self.tokenizer = tokenizer
        self.threads = threads
        self.decoder_start_token_id = decoder_start_token_id
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        # LongT5's transient-global export fails on inputs shorter than one global block (a trace-time
        # branch); shorter inputs are padded to it, masked, which gives PyTorch's output exactly.
        self.min_encoder_tokens = min_encoder_tokens
        self.merged = files.merged

        self.fast_attention = files.fast_attention  # False for a stock export, such as the published one

        options = session_options(threads)
        self.encoder = self._session(files.encoder, options)
        self.decoder = self._session(files.decoder, options)
        # Merged layout: the same session serves both steps, switched by its use_cache_branch input.
        self.decoder_with_past = (
            self.decoder if files.merged else self._session(files.decoder_with_past, options)
        )

        # Every name and dtype comes from the sessions, and each run is fed exactly the inputs its session
        # declares: exporters differ (the December 2022 optimum's with-past decoder also declares
        # encoder_hidden_states, which today's does not; ids may be int32), and no layer count is fixed.
        self._encoder_inputs = _declared_inputs(self.encoder, files.encoder, ENCODER_INPUTS)
        self._encoder_output = self.encoder.get_outputs()[0].name  # last_hidden_state
        step_inputs = DECODER_INPUTS | ({"use_cache_branch"} if files.merged else set())
        self._decoder_inputs = _declared_inputs(self.decoder, files.decoder, step_inputs, pasts=files.merged)
        with_past_file = files.decoder if files.merged else files.decoder_with_past
        self._with_past_inputs = _declared_inputs(
            self.decoder_with_past, with_past_file, step_inputs, pasts=True
        )
        self._past_names = [name for name in self._with_past_inputs if name.startswith("past_key_values.")]
        # Only the self-attention ("decoder") cache changes after the first step; the cross-attention
        # ("encoder") keys/values of the first step are reused as they are.
        self._self_attention_pasts = [name for name in self._past_names if ".encoder." not in name]
        self._first_outputs = ["logits"] + [self._present(name) for name in self._past_names]
        self._step_outputs = ["logits"] + [self._present(name) for name in self._self_attention_pasts]
        _check_outputs(self.decoder, files.decoder, self._first_outputs)
        _check_outputs(self.decoder_with_past, with_past_file, self._step_outputs)
        if files.merged:
            # The merged decoder's first step still needs (unused) past inputs: empty caches.
            self._empty_pasts = {
                i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=_NUMPY_DTYPES.get(i.type, np.float32))
                for i in self.decoder.get_inputs()
                if i.name.startswith("past_key_values.")
            }

    @staticmethod
    def _present(past_name: str) -> str:
        return "present." + past_name.removeprefix("past_key_values.")

    @staticmethod
    def _session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own exception types for bad files
            raise ModelLoadError(
                f"ONNX Runtime could not load {path}: {error}. The file may be truncated or from an "
                "incompatible exporter; delete it and download or export it again."
            ) from error

    @classmethod
    def load(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL_ID,
        *,
        threads: int | None = None,
        quantized: bool | None = False,
        revision: str | None = None,
    ) -> Seq2SeqGenerator:
        """Load an ONNX seq2seq export from a local folder or a Hub repo id (ModelLoadError if not).

        ``quantized``: True for the ``*_quantized.onnx`` (int8) files, False for the plain ones, None for
        int8 when the export has it (the release pipeline publishes int8 only past its agreement gate).
        """
        if quantized is None:
            model_id, model_dir = resolve_model_dir(model, quantized=True, revision=revision)
            quantized = has_model_files(model_dir, quantized=True)
            if not quantized:
                model_id, model_dir = resolve_model_dir(model, quantized=False, revision=revision)
        else:
            model_id, model_dir = resolve_model_dir(model, quantized=quantized, revision=revision)
        files = find_model_files(model_dir, quantized=quantized, model_id=model_id)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as error:  # tokenizers raises a bare Exception for malformed files
            raise ModelLoadError(
                f"Could not read {model_dir / 'tokenizer.json'} of model {model_id!r}: {error}"
            ) from error
        # The model sees the whole input: length limits are the caller's job (cqa.format.fit_model_input).
        tokenizer.no_truncation()
        tokenizer.no_padding()

        config = _read_json(model_dir / "config.json")
        generation = _read_json(model_dir / "generation_config.json")
        start = generation.get("decoder_start_token_id", config.get("decoder_start_token_id"))
        eos = generation.get("eos_token_id", config.get("eos_token_id"))
        if start is None or eos is None:
            raise ModelLoadError(
                f"{model_dir / 'config.json'} of model {model_id!r} names no decoder_start_token_id or "
                "eos_token_id; re-export the model."
            )
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        pad = generation.get("pad_token_id", config.get("pad_token_id")) or 0
        transient_global = config.get("encoder_attention_type") == "transient-global"
        global_block = config.get("global_block_size", 0) if transient_global else 0
        generator = cls(
            model_id,
            model_dir,
            files,
            tokenizer,
            threads or default_threads(),
            int(start),
            eos_ids,
            pad_token_id=int(pad),
            min_encoder_tokens=int(global_block or 0),
        )
        log.info("CPU: %s", cpu_summary())  # a Space does not say which CPU it got; its flags set the speed
        if generator.speed_notice:
            log.warning("%s", generator.speed_notice)
        return generator

    @property
    def speed_notice(self) -> str | None:
        """For a stock export (no fused attention): what that costs and the command that makes a fast copy,
        for the log and the page; None for an export made by training/export.py."""
        if self.fast_attention:
            return None
        precision = "int8" if self.files.quantized else "fp32"
        return (
            f"Model {self.model_id} is a stock ONNX export ({precision}, LongT5's attention as exported, "
            "not fused): the published model takes ~10-12 s per answer at 4,096 tokens on 2 cores. A copy "
            f"1.6-2.9x faster (fused attention, int8): `{FAST_EXPORT_COMMAND}` (or `make fast-model`), "
            f"then serve it with `--model {FAST_EXPORT_FOLDER}`, or push that folder to the Hub and set "
            "MODEL_ID."
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it, end-of-sequence included."""
        return len(self.tokenizer.encode(text).ids)

    def stream(self, text: str, max_new_tokens: int = 128, min_new_tokens: int = 0) -> Iterator[Answer]:
        """Greedy generation, yielding an Answer each time the decoded text grows, then a final one.

        ``min_new_tokens``: end-of-sequence is not allowed before that many tokens (as in transformers).
        """
        started = time.perf_counter()
        input_ids = self.tokenizer.encode(text).ids
        hidden, mask = self.encode(input_ids)
        encoder_seconds = time.perf_counter() - started

        generated: list[int] = []
        text_so_far = ""
        for token in self.decode_ids(hidden, mask, max_new_tokens, min_new_tokens):
            generated.append(token)
            # Decode all ids each time: pieces join differently than they decode one by one.
            new_text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if new_text != text_so_far:
                text_so_far = new_text
                seconds = time.perf_counter() - started
                yield Answer(text_so_far, len(input_ids), len(generated), encoder_seconds, seconds, False)
        seconds = time.perf_counter() - started
        yield Answer(text_so_far, len(input_ids), len(generated), encoder_seconds, seconds, True)

    def encode(self, input_ids: Sequence[int]) -> tuple[ort.OrtValue, ort.OrtValue]:
        """The encoder's output (1, tokens, d_model) for one input and its attention mask, as OrtValues."""
        padding = max(0, self.min_encoder_tokens - len(input_ids))
        ids = np.array([[*input_ids, *[self.pad_token_id] * padding]], dtype=np.int64)
        mask = np.ones_like(ids)
        if padding:
            mask[0, len(input_ids) :] = 0
        feed = _feed(self._encoder_inputs, {"input_ids": ids, "attention_mask": mask})
        (hidden,) = self.encoder.run_with_ort_values([self._encoder_output], feed)
        return hidden, feed["attention_mask"] if "attention_mask" in feed else _ort_value(mask)

    def decode_ids(
        self, hidden: ort.OrtValue, mask: ort.OrtValue, max_new_tokens: int = 128, min_new_tokens: int = 0
    ) -> Iterator[int]:
        """Greedy decoding from an encoder output and its attention mask (both from :meth:`encode`):
        yields each new token id, end-of-sequence excluded."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        encoder_values = {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}

        # First step: the decoder without cache also returns the cross-attention keys/values.
        first = {"input_ids": np.array([[self.decoder_start_token_id]], dtype=np.int64), **encoder_values}
        if self.merged:
            first["use_cache_branch"] = np.array([False])
            first.update(self._empty_pasts)
        outputs = self.decoder.run_with_ort_values(self._first_outputs, _feed(self._decoder_inputs, first))
        pasts = dict(zip(self._past_names, outputs[1:], strict=True))

        # Later steps: the with-past decoder's own inputs (today's optimum declares no encoder_hidden_states
        # there, the December 2022 one and the merged decoder do, unread by the cache branch). One reusable
        # (1, 1) array of its ids dtype holds each step's token; its OrtValue shares that memory.
        declared = {k: v for k, v in self._with_past_inputs.items() if not k.startswith("past_key_values.")}
        step_ids = np.zeros((1, 1), dtype=_NUMPY_DTYPES.get(declared["input_ids"], np.int64))
        later = {"input_ids": step_ids, **encoder_values, "use_cache_branch": np.array([True])}
        feed = _feed(declared, later)

        for step in range(max_new_tokens):
            logits = outputs[0].numpy()[0, -1]
            if step < min_new_tokens:
                logits[list(self.eos_token_ids)] = -np.inf
            token = int(np.argmax(logits))
            if token in self.eos_token_ids:
                return
            yield token
            if step + 1 == max_new_tokens:
                return
            step_ids[0, 0] = token
            outputs = self.decoder_with_past.run_with_ort_values(self._step_outputs, feed | pasts)
            pasts.update(zip(self._self_attention_pasts, outputs[1:], strict=True))

    def generate(self, text: str, max_new_tokens: int = 128, min_new_tokens: int = 0) -> Answer:
        """The final Answer of :meth:`stream`."""
        *_, final = self.stream(text, max_new_tokens, min_new_tokens)  # stream ends with done=True
        return final

    def warmup(self, tokens: int = 300) -> Answer:
        """Run every session once on an input of about ``tokens`` tokens, so that the first user's answer
        does not pay the cold start. The app passes its longest input: the first run at a length above any
        before it pays for the memory it touches first (bench/NOTES.md, 7.6)."""
        # Inputs shorter than one global block are a known export hazard, hence at least a sentence or two;
        # two new tokens so that both decoder sessions run.
        sentence = "This warm-up paragraph stands in for a blog post about models and data. "
        sentence_tokens = max(1, self.count_tokens(sentence) - 1)  # minus end-of-sequence
        context = sentence * max(2, tokens // sentence_tokens - 1)
        return self.generate(context + "|| <Q> What is it about? <A> ", max_new_tokens=2, min_new_tokens=2)
