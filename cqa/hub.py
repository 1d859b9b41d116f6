"""Find the ONNX export to serve: a local folder or a Hugging Face Hub repo, and which files in it.

Two layouts are understood, both written by Optimum's ONNX exporter:

    three-file  encoder_model.onnx + decoder_model.onnx + decoder_with_past_model.onnx   (the published one)
    merged      encoder_model.onnx + decoder_model_merged.onnx (one decoder, ``use_cache_branch`` input)

``quantized=True`` asks for the ``*_quantized.onnx`` variants of the same names. Next to the ONNX files:
``config.json`` (needed), ``generation_config.json`` (optional) and ``tokenizer.json`` (needed).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "tryolabs/long-t5-tglobal-base-blogpost-cqa-onnx"

CONFIG_FILES = ("config.json", "tokenizer.json")
OPTIONAL_FILES = ("generation_config.json",)

# The way out printed with every ModelLoadError (the app shows it on its error page). Each command works
# on a fresh clone: make builds the environment it needs first.
HOW_TO_FIX = (
    "The way out: `make demo` serves a tiny random model instead (it builds the full environment, .venv, "
    "when missing, then the model in seconds; the page works, the answers are random words). To serve an "
    'export from a folder: `make run ARGS="--model DIR"`, e.g. out/smoke/onnx after `make smoke`, or '
    "the OUT of `.venv/bin/python -m training.export CHECKPOINT OUT`."
)

# The published ONNX export is a stock one (December 2022: fp32, LongT5's attention as exported), 1.6-2.9x
# slower than this project's export of the same weights with the fused attention and int8. The command
# that makes that fast copy from the published PyTorch checkpoint (`make fast-model` runs it in .venv):
PUBLISHED_CHECKPOINT = "tryolabs/long-t5-tglobal-base-blogpost-cqa"
FAST_EXPORT_FOLDER = "out/fast"  # where FAST_EXPORT_COMMAND writes the export (fp32 and int8 files)
FAST_EXPORT_COMMAND = f"python -m training.export {PUBLISHED_CHECKPOINT} out/fast --quantize int8"
# training/onnx_patches.py's finalize_encoder puts each layer's fused attention in this model-local
# function: its presence in the encoder is what marks a fast export.
FAST_ATTENTION_FUNCTION = ("cqa", "BlockAttention")  # (domain, name)

# "org/name" or "name": what the Hub accepts as a repo id. Anything else can only be a local path.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which model, why, and how to fix it."""


@dataclass(frozen=True)
class ModelFiles:
    """The ONNX files of one export. ``decoder_with_past`` is None for the merged layout."""

    encoder: Path
    decoder: Path
    decoder_with_past: Path | None

    @property
    def merged(self) -> bool:
        return self.decoder_with_past is None

    @property
    def quantized(self) -> bool:
        """int8 files: the ``*_quantized.onnx`` ones (what ``training.export --quantize int8`` writes
        beside the fp32 files, optimum's convention)."""
        return self.encoder.name.endswith("_quantized.onnx")

    @property
    def fast_attention(self) -> bool:
        """Whether the encoder has this project's fused TGlobal attention (training/export.py); False for
        a stock export such as the published one. Reads only the file's top-level fields (milliseconds)."""
        return FAST_ATTENTION_FUNCTION in onnx_functions(self.encoder)


def onnx_functions(path: Path) -> set[tuple[str, str]]:
    """(domain, name) of the model-local functions of an ONNX file; empty if it cannot be read.

    An ONNX file is one protobuf ModelProto. The serving set has no ``onnx`` package, and this needs only
    the top-level fields: the graph (weights included) is skipped with a seek, each function
    (field 25, FunctionProto) is read for its name (field 1) and domain (field 10).
    """
    functions = set()
    try:
        with open(path, "rb") as stream:
            for field, value in _protobuf_fields(stream, skip=lambda field: field != 25):
                if field == 25:
                    parts = dict(_protobuf_fields(io.BytesIO(value), skip=lambda field: field not in (1, 10)))
                    functions.add((parts.get(10, b"").decode(), parts.get(1, b"").decode()))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        log.warning("could not read the functions of %s: %s", path, error)
    return functions


def _protobuf_fields(stream: BinaryIO, skip: Callable[[int], bool]) -> Iterator[tuple[int, bytes | None]]:
    """(field number, bytes) of each length-delimited field of one protobuf message, in file order; other
    wire types, and the fields ``skip`` names, are passed over (their value is None)."""
    while (key := _varint(stream)) is not None:
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            _varint(stream)
            yield field, None
        elif wire_type in (1, 5):  # fixed 64 / 32 bits
            stream.seek(8 if wire_type == 1 else 4, io.SEEK_CUR)
            yield field, None
        elif wire_type == 2:  # length-delimited: bytes, strings, sub-messages
            length = _varint(stream)
            if length is None:
                raise ValueError("truncated protobuf field")
            if skip(field):
                stream.seek(length, io.SEEK_CUR)
                yield field, None
            else:
                value = stream.read(length)
                if len(value) != length:
                    raise ValueError("truncated protobuf field")
                yield field, value
        else:
            raise ValueError(f"not a protobuf message (wire type {wire_type})")


def _varint(stream: BinaryIO) -> int | None:
    """The next base-128 varint of ``stream``, or None at its end."""
    result = shift = 0
    while byte := stream.read(1):
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
    if shift:
        raise ValueError("truncated protobuf varint")
    return None


def _onnx_name(stem: str, quantized: bool) -> str:
    return f"{stem}_quantized.onnx" if quantized else f"{stem}.onnx"


def _patterns(stems: tuple[str, ...], quantized: bool) -> list[str]:
    # The ONNX files, and their external-data files (written by the exporter for models over 2 GB).
    names = [_onnx_name(stem, quantized) for stem in stems]
    return names + [name + "_data" for name in names] + [name + ".data" for name in names]


THREE_FILE_STEMS = ("encoder_model", "decoder_model", "decoder_with_past_model")
MERGED_STEMS = ("encoder_model", "decoder_model_merged")


def find_model_files(model_dir: Path, quantized: bool = False, model_id: str | None = None) -> ModelFiles:
    """The export's ONNX files in ``model_dir`` (three-file layout preferred), or a ModelLoadError
    that lists what is missing."""
    model_id = model_id or str(model_dir)
    missing = [name for name in CONFIG_FILES if not (model_dir / name).is_file()]
    three_file = [model_dir / _onnx_name(stem, quantized) for stem in THREE_FILE_STEMS]
    merged = [model_dir / _onnx_name(stem, quantized) for stem in MERGED_STEMS]
    if all(path.is_file() for path in three_file):
        onnx_missing: list[str] = []
        files = ModelFiles(*three_file)
    elif all(path.is_file() for path in merged):
        onnx_missing = []
        files = ModelFiles(merged[0], merged[1], None)
    else:
        # Name the files of the layout that is closer to complete (the three-file one on a tie).
        three_missing = [p.name for p in three_file if not p.is_file()]
        merged_missing = [p.name for p in merged if not p.is_file()]
        onnx_missing = merged_missing if len(merged_missing) < len(three_missing) else three_missing
        files = None
    missing += onnx_missing
    if missing or files is None:
        variant = " int8 (*_quantized.onnx)" if quantized else ""
        hint = (
            " Quantize the export first (`python -m training.export CHECKPOINT OUT --quantize int8` writes "
            "them into OUT), or serve its fp32 files (`--precision fp32`, or `auto`)."
            if quantized
            else ""
        )
        raise ModelLoadError(
            f"Model {model_id!r} ({model_dir}) is not a complete{variant} ONNX seq2seq export: missing "
            f"{', '.join(missing)}. Expected {', '.join(CONFIG_FILES)} and either "
            f"{' + '.join(p.name for p in three_file)} or {' + '.join(p.name for p in merged)}.{hint} "
            f"{HOW_TO_FIX}"
        )
    return files


def has_model_files(model_dir: Path, quantized: bool = False) -> bool:
    """Whether ``model_dir`` holds a complete export (of the int8 files, with ``quantized``)."""
    try:
        find_model_files(model_dir, quantized=quantized)
    except ModelLoadError:
        return False
    return True


def resolve_model_dir(
    model: str | os.PathLike, quantized: bool = False, revision: str | None = None
) -> tuple[str, Path]:
    """(model id, local folder) for a local export folder or a Hub repo id.

    A Hub repo is fetched with ``snapshot_download`` (normal cache; with HF_HUB_OFFLINE=1 it resolves
    from the cache only), downloading just the files one layout needs.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(model), path
    model_id = str(model)
    if path.exists() or not _REPO_ID.match(model_id):
        raise ModelLoadError(f"Model {model_id!r}: no such folder, and not a Hub repo id. {HOW_TO_FIX}")
    return model_id, _download(model_id, quantized, revision)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, as huggingface_hub reads it (errors then name the cache)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _download(repo_id: str, quantized: bool, revision: str | None) -> Path:
    # Imported here, not at the top: huggingface_hub reads HF_HUB_OFFLINE and the cache folder on import.
    from huggingface_hub import snapshot_download

    common = [*CONFIG_FILES, *OPTIONAL_FILES]
    variant = " (int8 files)" if quantized else ""
    log.info("fetching model %s%s from the Hugging Face Hub (or its cache)", repo_id, variant)
    try:
        # The three-file layout first: a repo holding both layouts then costs no second decoder download.
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=common + _patterns(THREE_FILE_STEMS, quantized)
            )
        )
        if not (folder / _onnx_name("decoder_with_past_model", quantized)).is_file():
            folder = Path(
                snapshot_download(
                    repo_id, revision=revision, allow_patterns=common + _patterns(MERGED_STEMS, quantized)
                )
            )
    except (OSError, ValueError) as error:
        # OSError covers the Hub's errors (missing repo, revision, network, offline cache miss:
        # all subclasses of requests' IOError or of OSError); ValueError a malformed repo id.
        where = " (HF_HUB_OFFLINE is set, so only the local Hub cache was searched)" if hub_offline() else ""
        revision_text = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"Could not get model {repo_id!r}{revision_text} from the Hugging Face Hub{where}, and there is "
            f"no local folder of that name: "
            f"{type(error).__name__}: {str(error).strip().rstrip('.')}. {HOW_TO_FIX}"
        ) from error
    log.info("model %s is in %s", repo_id, folder)
    return folder
