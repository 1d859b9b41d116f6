"""ONNX export of a LongT5 checkpoint in the published three-file layout.

(Minimal first version: the parity gate, int8 and the CLI come with the release-path work.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

ONNX_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


def export_onnx(checkpoint: str | Path, out: str | Path) -> Path:
    """Export ``checkpoint`` to ``out``: three ONNX files, config, generation config, tokenizer."""
    from optimum.exporters.onnx import main_export

    out = Path(out)
    main_export(
        str(checkpoint),
        out,
        task="text2text-generation-with-past",
        no_post_process=True,  # keep the three-file layout of the published export (no merged decoder)
        do_validation=False,
    )
    for name in ("spiece.model",):
        if (Path(checkpoint) / name).exists() and not (out / name).exists():
            shutil.copy(Path(checkpoint) / name, out / name)
    return out
