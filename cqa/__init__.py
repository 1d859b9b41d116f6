"""Runtime shared by the chat app and the training package.

Lean on purpose: onnxruntime, tokenizers, numpy and huggingface_hub only. Never import torch here.
"""

from cqa.format import (
    ADDED_TOKENS,
    ANSWER_TOKEN,
    DEFAULT_MAX_INPUT_TOKENS,
    DEFAULT_TURNS,
    NO_ANSWER,
    QUESTION_TOKEN,
    SEPARATOR_TOKEN,
    FittedInput,
    build_model_input,
    dialogue_part,
    fit_model_input,
)

__all__ = [
    "ADDED_TOKENS",
    "ANSWER_TOKEN",
    "DEFAULT_MAX_INPUT_TOKENS",
    "DEFAULT_TURNS",
    "NO_ANSWER",
    "QUESTION_TOKEN",
    "SEPARATOR_TOKEN",
    "FittedInput",
    "build_model_input",
    "dialogue_part",
    "fit_model_input",
]
