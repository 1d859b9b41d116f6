"""What the trainer is given besides the model and data: the score that picks the best checkpoint,
the evaluation metrics, and the callbacks (one log line per evaluation, a stop on a NaN loss, callback
state on --resume)."""

from __future__ import annotations

import logging
import math

from cqa.format import NO_ANSWER
from training.model import decode

logger = logging.getLogger("training.train")

# Ties in F1 go to the lower validation loss, by a margin far below any F1 difference that matters (a
# loss under 100 moves the score by less than 1e-5 F1 points). Early stopping ignores such margins.
LOSS_TIE_BREAK = 1e-7
TIE_MARGIN = 1e-4


def selection_score(f1: float, losses) -> float:
    """What picks the best checkpoint: the F1, and among equal F1s the lower validation loss (a random
    smoke model scores 0 F1 at every evaluation: the best one is then the most trained, not the first)."""
    import numpy as np

    if losses is None or not np.size(losses):
        return f1
    loss = float(np.mean(losses))
    return f1 - LOSS_TIE_BREAK * min(loss, 100.0) if math.isfinite(loss) else f1


def make_compute_metrics(tokenizer, references: list[list[str]], no_answer: str = NO_ANSWER):
    """compute_metrics for the trainer: F1 and exact match of the generated answers, in percent
    (training.metrics.SCORE_NAME: the no-answer text counts as the official empty answer)."""
    from training.metrics import score

    def compute_metrics(prediction) -> dict[str, float]:
        generated = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        texts = decode(tokenizer, generated)
        # With several processes the trainer gathers with gather_for_metrics, which drops the examples
        # Accelerate repeats to fill the last batch: one prediction per validation example, in order.
        # Were there more (a gather that keeps the repeats), the real ones come first.
        if len(texts) < len(references):
            raise RuntimeError(f"{len(texts)} predictions for {len(references)} validation examples")
        scores = score(texts[: len(references)], references, no_answer=no_answer)
        return {**scores, "selection": selection_score(scores["f1"], prediction.losses)}

    return compute_metrics


def _epoch_text(epoch: float | None) -> str:
    epoch = epoch or 0.0
    return f"{epoch:.0f}" if abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


def eval_history(log_history: list[dict]) -> list[dict]:
    """The evaluations of a run, in order: epoch, step, f1, exact, loss."""
    return [
        {
            "epoch": e.get("epoch"),
            "step": e["step"],
            "f1": e["eval_f1"],
            "exact": e["eval_exact"],
            "loss": e.get("eval_loss"),
            "selection": e.get("eval_selection", e["eval_f1"]),  # F1, ties broken by the loss
        }
        for e in log_history
        if "eval_f1" in e
    ]


def epoch_log_callback():
    from transformers import TrainerCallback

    class EpochLogCallback(TrainerCallback):
        """One clear line per evaluation: epoch, F1, exact match and the best so far."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_f1" not in metrics:
                return
            history = eval_history(state.log_history)
            best = (
                max(history, key=lambda e: e["selection"])
                if history
                else {"f1": metrics["eval_f1"], "step": state.global_step}
            )
            where = f"epoch {_epoch_text(state.epoch)}/{_epoch_text(state.num_train_epochs)}"
            if args.max_steps > 0:
                where = f"step {state.global_step}/{state.max_steps} (epoch {_epoch_text(state.epoch)})"
            logger.info(
                "%s: eval f1=%.2f exact=%.2f (best %.2f at step %d)",
                where,
                metrics["eval_f1"],
                metrics["eval_exact"],
                best["f1"],
                best["step"],
            )

    return EpochLogCallback()


def non_finite_loss_callback():
    from transformers import TrainerCallback

    class NonFiniteLossCallback(TrainerCallback):
        """Stop with a clear message when the logged training loss is NaN or infinite.

        LongT5 in bf16 can overflow (transformers issue #19322); every later step would be wasted and
        the best checkpoint stays the last finite one. The log lines also carry ``grad_norm``, whose
        growth usually comes first. Every process sees the same (averaged) loss, so all stop together.
        """

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss is {loss} at step {state.global_step} (grad_norm "
                    f"{(logs or {}).get('grad_norm')}): training diverged. With bf16, LongT5 can overflow "
                    "(transformers issue #19322): resume from the last checkpoint with --resume --bf16 "
                    "false, or lower the learning_rate"
                )

    return NonFiniteLossCallback()


def callback_state_guard(trainer, early_stopping_patience: int | None):
    from transformers import EarlyStoppingCallback, TrainerCallback
    from transformers.trainer_callback import ExportableState

    class CallbackStateGuard(TrainerCallback):
        """On --resume the trainer restores the state of the callbacks the checkpoint knew
        (``restore_callback_states_from_checkpoint``: early stopping's patience counter). A callback
        the checkpoint did not know (``--early_stopping_patience`` added at resume) starts fresh
        instead of failing the first save (KeyError in ``stateful_callbacks``), and the recipe's
        patience wins over the one stored in the checkpoint."""

        def on_train_begin(self, args, state, control, **kwargs):
            for callback in trainer.callback_handler.callbacks:
                if not isinstance(callback, ExportableState):
                    continue
                name = type(callback).__name__
                if name not in state.stateful_callbacks:
                    if state.global_step:
                        logger.info("%s was not in the checkpoint: its state starts fresh", name)
                    state.stateful_callbacks[name] = callback.state()
                if isinstance(callback, EarlyStoppingCallback) and early_stopping_patience:
                    callback.early_stopping_patience = early_stopping_patience
                    if state.global_step:
                        logger.info(
                            "early stopping: %d of %d evaluations without a better F1 so far",
                            callback.early_stopping_patience_counter,
                            early_stopping_patience,
                        )

        def on_train_end(self, args, state, control, **kwargs):
            stopping = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
            for callback in stopping if state.is_world_process_zero else []:
                if callback.early_stopping_patience_counter >= callback.early_stopping_patience:
                    logger.info(
                        "stopped early at epoch %s: %d evaluations without a better F1",
                        _epoch_text(state.epoch),
                        callback.early_stopping_patience_counter,
                    )

    return CallbackStateGuard()
