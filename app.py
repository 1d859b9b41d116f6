"""Chat with a document: a fine-tuned LongT5 answers questions about it, served by ONNX Runtime.

    python app.py [--model ID_OR_DIR] [--context FILE] [--host H] [--port N] [--threads N]
                  [--max-input-tokens N] [--max-new-tokens N] [--precision auto|int8|fp32]

On a Hugging Face Space the environment variables MODEL_ID, CONTEXT_FILE, THREADS and MAX_INPUT_TOKENS
configure it (command-line options win). The conversation lives on the server, one per browser tab or
API client session; the model sees the document and the last two turns (cqa.format builds the input).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports (and no network) by default

import gradio as gr

from cqa.documents import (
    Document,
    DocumentError,
    document_from_text,
    load_document_bytes,
    load_document_file,
)
from cqa.format import DEFAULT_MAX_INPUT_TOKENS, dialogue_part, fit_model_input
from cqa.generator import DEFAULT_MODEL_ID, Answer, ModelLoadError, Seq2SeqGenerator

DEFAULT_DOCUMENT = Path(__file__).parent / "docs" / "how-this-chatbot-works.md"
DEFAULT_MAX_NEW_TOKENS = 128
MAX_QUESTION_TOKENS = 1_000
QUEUE_SIZE = 16  # waiting requests; past this Gradio tells the user the app is busy
# Gradio's own upload limit; cqa.documents refuses anything over 1 MB with a clearer message.
MAX_UPLOAD = "5mb"
PRECISIONS = {"auto": None, "int8": True, "fp32": False}  # --precision -> Seq2SeqGenerator.load(quantized=)
EXAMPLE_QUESTIONS = [  # each answered by one sentence of the default document
    "How many conversations are in TryoCoQA?",
    "What does the <Q1> marker mean?",
    "Why ONNX?",
    "How long did answers take on the original Space?",
    "What is token F1?",
    "How many parameters does the model have?",
]

log = logging.getLogger("cqa.app")


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    stats: str  # "1.8 s · 4,012 tokens in · 23 out"


@dataclass(frozen=True)
class Conversation:
    """One session's state: the document and the turns so far (immutable: each change is a new value)."""

    document: Document
    turns: tuple[Turn, ...] = ()

    @property
    def history(self) -> list[tuple[str, str]]:
        return [(turn.question, turn.answer) for turn in self.turns]


def _literal(text: str) -> str:
    """Text shown exactly as typed or generated: HTML-escaped, line breaks kept (the Chatbot renders HTML)."""
    return html.escape(text).replace("\n", "<br>")


def _markdown_literal(text: str) -> str:
    """Text inside Markdown with no markup of its own (e.g. an uploaded file's title): Markdown's
    characters backslash-escaped, then only &, < and > as HTML entities (an entity such as &#x27; would
    be broken by the backslash before its #, and quotes need none)."""
    return html.escape(re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", text), quote=False)


def _messages(turns: tuple[Turn, ...], pending: str | None = None, partial: str = "") -> list[dict]:
    """The Chatbot's messages for ``turns``, plus a question still being answered."""
    messages = []
    for turn in turns:
        answer = _literal(turn.answer) if turn.answer else "<em>(no answer)</em>"
        stats = f'<br><small style="opacity: 0.6">{turn.stats}</small>'
        messages.append({"role": "user", "content": _literal(turn.question)})
        messages.append({"role": "assistant", "content": answer + stats})
    if pending is not None:
        messages.append({"role": "user", "content": _literal(pending)})
        messages.append({"role": "assistant", "content": _literal(partial) + " …"})
    return messages


def build_app(
    generator: Seq2SeqGenerator,
    document: Document,
    *,
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> gr.Blocks:
    """The chat UI around ``generator``; every session starts with ``document`` and an empty conversation."""

    def header(doc: Document) -> str:
        tokens = len(generator.tokenizer.encode(doc.text, add_special_tokens=False).ids)
        int8 = " (int8)" if generator.files.quantized else ""
        return (
            f"**Document:** {_markdown_literal(doc.title)} ({doc.words:,} words, {tokens:,} tokens)  \n"
            f"**Model:** `{generator.model_id}`{int8} on ONNX Runtime "
            f"(greedy, up to {max_new_tokens} new tokens; input up to {max_input_tokens:,} tokens, "
            "the document first, then the last two turns)"
        )

    # --- chat: handlers yield (chatbot, question box, notice, input info, dialogue, details, state) ---

    def unchanged(notice: str) -> tuple:
        """Show ``notice`` and change nothing else (the question stays in its box, nothing is lost)."""
        return (gr.skip(), gr.skip(), notice, gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def ask(question: str, conversation: Conversation):
        """Answer ``question`` after ``conversation``, streaming; the state changes only at the end."""
        history = conversation.history
        try:
            fitted = fit_model_input(
                generator.tokenizer, conversation.document.text, history, question, max_input_tokens
            )
        except ValueError as error:  # the history and the question alone are over the limit
            yield unchanged(f"⚠️ {error} Press Clear to start a new conversation.")
            return
        notice = f"⚠️ {fitted.notice}" if fitted.truncated else ""
        turns = ["no earlier turns yet", "the previous turn", "the last two turns"][min(len(history), 2)]
        info = (
            f"The model input is **{fitted.input_tokens:,} tokens**: the document "
            f"({fitted.kept_context_tokens:,} of its {fitted.context_tokens:,} tokens), then the dialogue "
            f"below ({turns}, then the question)."
        ) + (f"\n\n{notice}" if notice else "")
        dialogue = dialogue_part(history, question)

        def details(answer: Answer | None = None) -> dict:
            """For API clients: the exact model input and the answer so far ("text") with its numbers."""
            so_far = asdict(answer) if answer else {"text": "", "done": False}
            return {"question": question, "model_input": fitted.text, "truncated": fitted.truncated, **so_far}

        yield (_messages(conversation.turns, question), "", notice, info, dialogue, details(), conversation)
        try:
            for answer in generator.stream(fitted.text, max_new_tokens=max_new_tokens):
                chatbot = _messages(conversation.turns, question, answer.text)
                # details (which repeats the whole document) goes once before and once after, not per token.
                yield (chatbot, "", notice, info, dialogue, gr.skip(), conversation)
        except Exception as error:  # ONNX Runtime raises its own types; the session must survive it
            log.exception("generation failed")
            failure = (
                f"⚠️ The model failed on this question ({_markdown_literal(type(error).__name__)}: "
                f"{_markdown_literal(str(error)[:300])}). Your question is back in the box: send it again "
                "or press Clear."
            )
            yield (_messages(conversation.turns), question, failure, info, dialogue, gr.skip(), conversation)
            return
        log.info(
            "answered in %.2f s (encoder %.2f s): %d tokens in, %d out%s",
            answer.seconds,
            answer.encoder_seconds,
            answer.input_tokens,
            answer.output_tokens,
            ", document truncated" if fitted.truncated else "",
        )
        stats = f"{answer.seconds:.1f} s · {answer.input_tokens:,} tokens in · {answer.output_tokens} out"
        conversation = replace(conversation, turns=(*conversation.turns, Turn(question, answer.text, stats)))
        yield (_messages(conversation.turns), "", notice, info, dialogue, details(answer), conversation)

    def chat(question: str, conversation: Conversation):
        question = (question or "").strip()
        if not question:
            yield unchanged("Type a question first, then press Enter.")
            return
        question_tokens = generator.count_tokens(question)
        if question_tokens > MAX_QUESTION_TOKENS:
            message = (
                f"⚠️ Your question is {question_tokens:,} tokens long; the limit is {MAX_QUESTION_TOKENS:,}. "
                "Shorten it and send it again."
            )
            yield unchanged(message)
            return
        yield from ask(question, conversation)

    def retry(conversation: Conversation):
        if not conversation.turns:
            yield unchanged("Nothing to retry yet: ask a question first.")
            return
        last = conversation.turns[-1]
        yield from ask(last.question, replace(conversation, turns=conversation.turns[:-1]))

    def clear(conversation: Conversation) -> tuple:
        return ([], "", "The conversation was cleared.", "", "", None, Conversation(conversation.document))

    # --- documents: switching resets the conversation ---

    def switch(conversation: Conversation, load) -> tuple:
        """(state, header, document status) + an empty chat; on a DocumentError only the status changes."""
        try:
            new_document = load()
        except DocumentError as error:
            return (gr.skip(), gr.skip(), f"⚠️ {_markdown_literal(str(error))}") + (gr.skip(),) * 5
        log.info("document switched to %r (%d words)", new_document.title, new_document.words)
        status = f"Now answering questions about **{_markdown_literal(new_document.title)}**."
        empty_chat = ([], "New document: the conversation starts over.", "", "", None)
        return (Conversation(new_document), header(new_document), status, *empty_chat)

    def use_text(text: str, conversation: Conversation) -> tuple:
        return switch(conversation, lambda: document_from_text(text or ""))

    def use_file(path: str | None, conversation: Conversation) -> tuple:
        if not path:
            return (gr.skip(),) * 8
        return switch(conversation, lambda: load_document_bytes(Path(path).read_bytes(), Path(path).name))

    def use_default(conversation: Conversation) -> tuple:
        return switch(conversation, lambda: document)

    with gr.Blocks(title="Chat with a document") as demo:
        state = gr.State(Conversation(document))
        gr.Markdown("## Chat with a document")
        header_md = gr.Markdown(header(document), elem_id="header")
        chatbot = gr.Chatbot(
            label="Conversation",
            elem_id="chatbot",
            height=440,
            # Messages are HTML-escaped by _literal and shown as they are: no Markdown, no LaTeX.
            render_markdown=False,
            latex_delimiters=[],
            sanitize_html=True,
            allow_tags=False,
            feedback_options=None,
            buttons=["copy"],
            placeholder="Ask a question about the document. The bot remembers the last two turns.",
        )
        notice = gr.Markdown(label="Notice", elem_id="notice")
        with gr.Row():
            question = gr.Textbox(
                placeholder="Ask about the document, then press Enter",
                show_label=False,
                container=False,
                scale=5,
                autofocus=True,
                elem_id="question",
            )
            send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
        with gr.Row():
            retry_button = gr.Button("Retry", size="sm", scale=0, min_width=90, elem_id="retry")
            clear_button = gr.Button("Clear", size="sm", scale=0, min_width=90, elem_id="clear")
        gr.Examples(EXAMPLE_QUESTIONS, inputs=[question], label="Examples (about the default document)")
        with gr.Accordion("What the model sees", open=False):
            input_info = gr.Markdown(label="Model input summary")
            dialogue = gr.Textbox(
                label="The model input after the document (the last two turns and the question)",
                lines=3,
                max_lines=8,
                interactive=False,
            )
            # For API clients: the exact model input and the answer (hidden: it repeats the whole document).
            details = gr.JSON(label="Details", visible=False)
        with gr.Accordion("Change the document", open=False):
            gr.Markdown(
                "Upload a .txt, .md or .html file (up to 1 MB) or paste text. The conversation restarts."
            )
            document_status = gr.Markdown(label="Document status")
            upload = gr.File(label="Upload", file_types=[".txt", ".md", ".markdown", ".html", ".htm"])
            pasted = gr.Textbox(label="Or paste text", lines=6, max_lines=12)
            with gr.Row():
                use_pasted = gr.Button("Use the pasted text", size="sm")
                use_default_button = gr.Button("Back to the default document", size="sm")

        chat_outputs = [chatbot, question, notice, input_info, dialogue, details, state]
        # One generation at a time (two CPU cores); chat and retry share that single slot.
        # Queue position and progress show on the Chatbot only, not on every output.
        generate = {"concurrency_limit": 1, "concurrency_id": "generate", "show_progress_on": [chatbot]}
        chat_event = gr.on(
            [question.submit, send.click], chat, [question, state], chat_outputs, api_name="chat", **generate
        )
        retry_event = retry_button.click(retry, [state], chat_outputs, api_name="retry", **generate)
        running = [chat_event, retry_event]
        clear_button.click(clear, [state], chat_outputs, api_name="clear", cancels=running)
        # The Chatbot's own trash icon must reset the server-side conversation too.
        chatbot.clear(clear, [state], chat_outputs, api_visibility="private", cancels=running)

        document_outputs = [state, header_md, document_status, chatbot, notice, input_info, dialogue, details]
        use_pasted.click(use_text, [pasted, state], document_outputs, api_name="use_text", cancels=running)
        upload.upload(use_file, [upload, state], document_outputs, api_name="use_file", cancels=running)
        use_default_button.click(
            use_default, [state], document_outputs, api_name="use_default", cancels=running
        )
    return demo


def build_error_app(message: str) -> gr.Blocks:
    """The page served when the model cannot be loaded: the reason and the way out, instead of a chat."""
    with gr.Blocks(title="Chat with a document") as demo:
        gr.Markdown("## Chat with a document")
        gr.Markdown(
            f"⚠️ **The model could not be loaded.** {_markdown_literal(message)}", elem_id="load-error"
        )
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=env.get("MODEL_ID", DEFAULT_MODEL_ID),
        help="Hub repo id or local folder of the ONNX export (env MODEL_ID; default %(default)s)",
    )
    parser.add_argument(
        "--context",
        type=Path,
        default=env.get("CONTEXT_FILE", DEFAULT_DOCUMENT),
        help="the default document: a .txt, .md or .html file (env CONTEXT_FILE)",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    parser.add_argument(
        "--threads",
        type=int,
        default=env.get("THREADS") or None,
        help="ONNX Runtime threads (env THREADS; default: the cores)",
    )
    parser.add_argument(
        "--max-input-tokens",
        type=int,
        default=env.get("MAX_INPUT_TOKENS") or DEFAULT_MAX_INPUT_TOKENS,
        help="longer inputs lose the end of the document (env MAX_INPUT_TOKENS; default %(default)s)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=env.get("PRECISION", "auto"),
        help="auto: the int8 files (*_quantized.onnx) when the export has them, else fp32 (env PRECISION)",
    )
    parser.add_argument(
        "--quantized", dest="precision", action="store_const", const="int8", help="same as --precision int8"
    )
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help="waiting requests before 'busy'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        document = load_document_file(args.context)
    except DocumentError as error:
        log.error("The document could not be loaded. %s Choose another with --context FILE.", error)
        sys.exit(1)
    log.info("document: %r, %d words, from %s", document.title, document.words, args.context)

    log.info("loading model %s", args.model)
    try:
        quantized = PRECISIONS[args.precision]
        generator = Seq2SeqGenerator.load(args.model, threads=args.threads, quantized=quantized)
        generator.warmup()  # the first user's answer should be as fast as the rest
    except ModelLoadError as error:  # its message says which model, why, and how to fix it
        demo = build_error_app(str(error))
        log.error("%s\nServing a page that says so (no chat).", error)
    except Exception as error:  # an export ONNX Runtime loads but cannot run
        message = f"ONNX Runtime failed on a warm-up answer with {args.model}: {error}"
        demo = build_error_app(message + " Export the model again, or choose another with --model.")
        log.exception("%s\nServing a page that says so (no chat).", message)
    else:
        log.info(
            "model %s (%s) ready on %d thread(s)",
            generator.model_id,
            "int8" if generator.files.quantized else "fp32 files",
            generator.threads,
        )
        demo = build_app(
            generator, document, max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens
        )
    demo.queue(max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
