"""Runtime shared by the chat app and the training package.

Lean on purpose: onnxruntime, tokenizers, numpy and huggingface_hub, plus bm25s for documents over the
input limit (cqa.passages). Never import torch here.
"""

from cqa.format import (
    ADDED_TOKENS,
    ANSWER_TOKEN,
    CONTEXT_STRATEGIES,
    DEFAULT_MAX_INPUT_TOKENS,
    DEFAULT_TURNS,
    NO_ANSWER,
    QUESTION_TOKEN,
    SEPARATOR_TOKEN,
    FittedInput,
    build_model_input,
    dialogue_part,
    fit_model_input,
    neutralize_markers,
)

__all__ = [
    "ADDED_TOKENS",
    "ANSWER_TOKEN",
    "CONTEXT_STRATEGIES",
    "DEFAULT_MAX_INPUT_TOKENS",
    "DEFAULT_TURNS",
    "NO_ANSWER",
    "QUESTION_TOKEN",
    "SEPARATOR_TOKEN",
    "FittedInput",
    "build_model_input",
    "dialogue_part",
    "fit_model_input",
    "neutralize_markers",
]
