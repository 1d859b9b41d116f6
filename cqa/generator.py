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

Greedy decoding here gives the same ids as transformers' ``generate(num_beams=1)`` (tests/test_generator.py
checks it from 2 to 1100 input tokens, with and without ``min_new_tokens``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tokenizers

from cqa.hub import (
    DEFAULT_MODEL_ID,
    ModelFiles,
    ModelLoadError,
    find_model_files,
    has_model_files,
    resolve_model_dir,
)

__all__ = ["DEFAULT_MODEL_ID", "Answer", "ModelLoadError", "Seq2SeqGenerator", "default_threads"]

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

        options = session_options(threads)
        self.encoder = self._session(files.encoder, options)
        self.decoder = self._session(files.decoder, options)
        # Merged layout: the same session serves both steps, switched by its use_cache_branch input.
        self.decoder_with_past = (
            self.decoder if files.merged else self._session(files.decoder_with_past, options)
        )

        # Input and output names come from the sessions: no layer count is hard-coded.
        encoder_inputs = {i.name: i for i in self.encoder.get_inputs()}
        self._ids_dtype = _NUMPY_DTYPES.get(encoder_inputs["input_ids"].type, np.int64)
        self._mask_dtype = _NUMPY_DTYPES.get(encoder_inputs["attention_mask"].type, np.int64)
        self._encoder_output = self.encoder.get_outputs()[0].name  # last_hidden_state
        past_inputs = [
            i for i in self.decoder_with_past.get_inputs() if i.name.startswith("past_key_values.")
        ]
        self._past_names = [i.name for i in past_inputs]
        # Only the self-attention ("decoder") cache changes after the first step; the cross-attention
        # ("encoder") keys/values of the first step are reused as they are.
        self._self_attention_pasts = [name for name in self._past_names if ".encoder." not in name]
        self._first_outputs = ["logits"] + [self._present(name) for name in self._past_names]
        self._step_outputs = ["logits"] + [self._present(name) for name in self._self_attention_pasts]
        if files.merged:
            # The merged decoder's first step still needs (unused) past inputs: empty caches.
            self._empty_pasts = {
                i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=_NUMPY_DTYPES.get(i.type, np.float32))
                for i in past_inputs
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
        return cls(
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
        ids = np.array([[*input_ids, *[self.pad_token_id] * padding]], dtype=self._ids_dtype)
        mask = np.ones_like(ids, dtype=self._mask_dtype)
        if padding:
            mask[0, len(input_ids) :] = 0
        mask_value = _ort_value(mask)
        (hidden,) = self.encoder.run_with_ort_values(
            [self._encoder_output], {"input_ids": _ort_value(ids), "attention_mask": mask_value}
        )
        return hidden, mask_value

    def decode_ids(
        self, hidden: ort.OrtValue, mask: ort.OrtValue, max_new_tokens: int = 128, min_new_tokens: int = 0
    ) -> Iterator[int]:
        """Greedy decoding from an encoder output and its attention mask (both from :meth:`encode`):
        yields each new token id, end-of-sequence excluded."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        # One reusable (1, 1) array holds the token fed to each step; its OrtValue shares its memory.
        step_ids = np.array([[self.decoder_start_token_id]], dtype=self._ids_dtype)
        step_ids_value = _ort_value(step_ids)

        # First step: the decoder without cache also returns the cross-attention keys/values.
        feed = {"input_ids": step_ids_value, "encoder_attention_mask": mask, "encoder_hidden_states": hidden}
        if self.merged:
            feed["use_cache_branch"] = _ort_value(np.array([False]))
            feed.update({name: _ort_value(array) for name, array in self._empty_pasts.items()})
        outputs = self.decoder.run_with_ort_values(self._first_outputs, feed)
        pasts = dict(zip(self._past_names, outputs[1:], strict=True))

        # Later steps: the with-past decoder (optimum's takes no encoder_hidden_states; the merged one
        # declares it but its cache branch does not read it).
        feed = {"input_ids": step_ids_value, "encoder_attention_mask": mask}
        if self.merged:
            feed["encoder_hidden_states"] = hidden
            feed["use_cache_branch"] = _ort_value(np.array([True]))

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

    def warmup(self) -> None:
        """Run every session once, so that the first user's answer does not pay the cold start."""
        # A realistic shape: a few hundred tokens (inputs shorter than one global block are a known
        # export hazard), and two new tokens so that both decoder sessions run.
        context = "This warm-up paragraph stands in for a blog post about models and data. " * 20
        self.generate(context + "|| <Q> What is it about? <A> ", max_new_tokens=2, min_new_tokens=2)
