"""Chat with a document: a fine-tuned LongT5 answers questions about it, served by ONNX Runtime.

    python app.py [--model ID_OR_DIR] [--context FILE] [--host H] [--port N] [--threads N]
                  [--max-input-tokens N] [--max-new-tokens N] [--precision auto|int8|fp32]
                  [--context-strategy relevant|head] [--allow-local-urls]

On a Hugging Face Space the environment variables MODEL_ID, CONTEXT_FILE, THREADS, MAX_INPUT_TOKENS,
PRECISION, CONTEXT_STRATEGY and ALLOW_LOCAL_URLS configure it (command-line options win). The page is
laid out first, then its handlers; the conversation rules live in cqa.chat, the documents in cqa.documents.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports (and no network) by default

import gradio as gr

from cqa.chat import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_QUESTION_TOKENS,
    MAX_SESSIONS,
    SESSION_TTL_SECONDS,
    Busy,
    Chat,
    Conversation,
    GenerationSlot,
    Prepared,
    QuestionRejected,
    Sessions,
    Turn,
    conversation_markdown,
)
from cqa.documents import (
    LIMITS_TEXT,
    MAX_UPLOAD_BYTES,
    SUPPORTED_SUFFIXES,
    Document,
    DocumentError,
    document_from_text,
    fetch_url,
    load_document_bytes,
    load_document_file,
)
from cqa.evidence import is_no_answer
from cqa.format import CONTEXT_STRATEGIES, DEFAULT_MAX_INPUT_TOKENS
from cqa.generator import DEFAULT_MODEL_ID, Answer, ModelLoadError, Seq2SeqGenerator, cpu_summary
from cqa.hub import HOW_TO_FIX

__all__ = ["DEFAULT_DOCUMENT", "MAX_QUESTION_TOKENS", "PRECISIONS", "build_app", "main", "parse_args"]

DEFAULT_DOCUMENT = Path(__file__).parent / "docs" / "how-this-chatbot-works.md"
QUEUE_SIZE = 16  # questions waiting for the model; past this the user is told the app is busy
PRECISIONS = {"auto": None, "int8": True, "fp32": False}  # --precision -> Seq2SeqGenerator.load(quantized=)
WAIT_STEP_SECONDS = 0.5  # how often a waiting question reports its place in line (and notices a leaver)
NOT_LISTENING_SECONDS = 5.0  # a client whose updates stay unread this long is gone
EXAMPLE_QUESTIONS = [  # each answered by one sentence of the default document
    "How many conversations are in TryoCoQA?",
    "What does the <Q1> marker mean?",
    "Why ONNX?",
    "How long did answers take on the original Space?",
    "What is token F1?",
    "How many parameters does the model have?",
]

log = logging.getLogger("cqa.app")


# --- Text shown on the page: always literal (escaped HTML), never Markdown ---


def literal(text: str) -> str:
    """Text shown exactly as typed or generated: HTML-escaped, line breaks kept."""
    return html.escape(text).replace("\n", "<br>")


def isolated(text: str) -> str:
    """A title or file name inside a sentence: escaped, and in <bdi> so right-to-left text cannot
    reorder the rest of the line."""
    return f"<bdi>{html.escape(text)}</bdi>"


def warning(text: str) -> str:
    return f"⚠️ {literal(text)}"


def quote_html(document: Document, turn: Turn) -> str:
    """Under an answer: the sentence that holds it, quoted, with the answer marked; or why there is none."""
    if turn.evidence is None:
        if is_no_answer(turn.answer):
            return '<small class="evidence">The model found no answer in the document.</small>'
        return '<small class="evidence">Not found in the document: this answer is not a quote of it.</small>'
    evidence, text = turn.evidence, document.text
    page = document.page_at(evidence.start)
    where = f"Page {page} · " if page else ""
    before = text[evidence.quote_start : evidence.start]
    after = text[evidence.end : evidence.quote_end]
    marked = f"{literal(before)}<mark>{literal(text[evidence.start : evidence.end])}</mark>{literal(after)}"
    return f'<blockquote class="evidence"><small>{where}from the document:</small> “{marked}”</blockquote>'


def messages(
    document: Document, turns: tuple[Turn, ...], pending: str | None = None, partial: str = ""
) -> list:
    """The Chatbot's messages for ``turns``, plus a question still being answered."""
    shown = []
    for turn in turns:
        answer = literal(turn.answer) if turn.answer else "<em>(no answer)</em>"
        stats = f'<br><small style="opacity: 0.6">{turn.stats}</small>'
        shown.append({"role": "user", "content": literal(turn.question)})
        shown.append({"role": "assistant", "content": answer + quote_html(document, turn) + stats})
    if pending is not None:
        shown.append({"role": "user", "content": literal(pending)})
        shown.append({"role": "assistant", "content": literal(partial) + " …"})
    return shown


def document_html(document: Document, turn: Turn | None = None) -> str:
    """The whole document, literally, with the answer of ``turn`` marked (the page scrolls to it)."""
    text = document.text
    if turn is None or turn.evidence is None:
        return f'<div class="document">{literal(text)}</div>'
    start, end = turn.evidence.start, turn.evidence.end
    return (
        f'<div class="document">{literal(text[:start])}<mark id="evidence-mark">{literal(text[start:end])}'
        f"</mark>{literal(text[end:])}</div>"
    )


def model_name(generator: Seq2SeqGenerator) -> str:
    """The Hub id, or a local folder's name (never the server's absolute path)."""
    path = Path(generator.model_id)
    return path.name if path.is_dir() else generator.model_id


# Scroll the document view to the marked answer whenever it changes (gr.HTML runs this in the page).
SCROLL_JS = (
    "setTimeout(() => document.querySelector('#evidence-mark')?.scrollIntoView({block: 'center'}), 50);"
)
SCROLL_TO_MARK = f"watch('value', () => {{ {SCROLL_JS} }});"
# The document view keeps the document's line breaks and scrolls inside its own box.
DOCUMENT_CSS = ".document { white-space: pre-wrap; max-height: 420px; overflow-y: auto; padding: 0.5em; }"


def build_app(
    generator: Seq2SeqGenerator,
    document: Document,
    *,
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    context_strategy: str = "relevant",
    allow_local_urls: bool = False,
    queue_size: int = QUEUE_SIZE,
    session_ttl: float = SESSION_TTL_SECONDS,
    max_sessions: int = MAX_SESSIONS,
    not_listening_seconds: float = NOT_LISTENING_SECONDS,
) -> gr.Blocks:
    """The chat page around ``generator``; every session starts with ``document`` and an empty chat."""
    chat_rules = Chat(
        generator,
        max_input_tokens=max_input_tokens,
        max_new_tokens=max_new_tokens,
        context_strategy=context_strategy,
    )
    sessions = Sessions(document, ttl_seconds=session_ttl, capacity=max_sessions)
    slot = GenerationSlot(max_waiting=queue_size)
    downloads = Path(tempfile.mkdtemp(prefix="cqa-conversations-"))
    cpu = cpu_summary()

    def header(doc: Document) -> str:
        tokens = len(generator.tokenizer.encode(doc.text, add_special_tokens=False).ids)
        precision = "int8" if generator.files.quantized else "fp32"
        notes = f"<br><small>CPU: {html.escape(cpu)}</small>"
        if generator.speed_notice:  # a stock export: say what it costs and how to get a fast one
            notes += f"<br><small>⚠️ {literal(generator.speed_notice)}</small>"
        return (
            f"<b>Document:</b> {isolated(doc.title)} ({doc.words:,} words, {tokens:,} tokens)<br>"
            f"<b>Model:</b> <code>{html.escape(model_name(generator))}</code> ({precision}) on ONNX Runtime "
            f"(greedy, up to {max_new_tokens} new tokens; input up to {max_input_tokens:,} tokens: the "
            f"document{', its most relevant passages when longer' if context_strategy == 'relevant' else ''}"
            ", then the last two turns)" + notes
        )

    with gr.Blocks(title="Chat with a document", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Chat with a document")
        header_html = gr.HTML(header(document), elem_id="header", js_on_load=None)
        chatbot = gr.Chatbot(
            label="Conversation",
            elem_id="chatbot",
            height=440,
            # Messages are HTML-escaped by literal() and shown as they are: no Markdown, no LaTeX.
            render_markdown=False,
            latex_delimiters=[],
            sanitize_html=True,
            allow_tags=False,
            feedback_options=None,
            buttons=["copy"],
            placeholder="Ask a question about the document. The bot remembers the last two turns.",
        )
        notice = gr.HTML(elem_id="notice", js_on_load=None)
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
            download = gr.DownloadButton(
                "Download conversation", size="sm", scale=0, min_width=200, elem_id="download", visible=False
            )
        gr.Examples(EXAMPLE_QUESTIONS, inputs=[question], label="Examples (about the default document)")
        with gr.Accordion(
            "Document (the last answer highlighted)", open=False, elem_id="document-accordion"
        ) as document_accordion:
            document_view = gr.HTML(
                document_html(document),
                elem_id="document-view",
                js_on_load=SCROLL_TO_MARK,
                css_template=DOCUMENT_CSS,
            )
        with gr.Accordion("What the model sees", open=False):
            input_info = gr.HTML(elem_id="input-info", js_on_load=None)
            dialogue = gr.Textbox(
                label="The model input after the document (the last two turns and the question)",
                lines=3,
                max_lines=8,
                interactive=False,
            )
            kept = gr.Textbox(
                label="The parts of the document the model sees (when it is too long to see whole)",
                lines=3,
                max_lines=12,
                interactive=False,
                elem_id="kept",
            )
            # For API clients: the exact model input, the answer and its evidence (hidden: it repeats
            # the whole document).
            details = gr.JSON(label="Details", visible=False)
        with gr.Accordion("Change the document", open=False):
            gr.Markdown(
                f"Upload a file, give a web page's address, or paste text. {LIMITS_TEXT} "
                "The conversation restarts."
            )
            document_status = gr.HTML(elem_id="document-status", js_on_load=None)
            upload = gr.File(label="Upload", file_types=list(SUPPORTED_SUFFIXES), elem_id="upload")
            with gr.Row():
                url = gr.Textbox(
                    label="Or a web page address", placeholder="https://…", scale=5, elem_id="url"
                )
                use_url_button = gr.Button("Fetch the page", size="sm", scale=1, min_width=120)
            pasted = gr.Textbox(label="Or paste text", lines=6, max_lines=12)
            with gr.Row():
                use_pasted = gr.Button("Use the pasted text", size="sm")
                use_default_button = gr.Button("Back to the default document", size="sm")

        # --- chat ---

        def shown(conversation: Conversation) -> dict:
            """Every output that shows ``conversation`` as it is stored."""
            last = conversation.turns[-1] if conversation.turns else None
            return {
                chatbot: messages(conversation.document, conversation.turns),
                document_view: document_html(conversation.document, last),
                download: download_button(conversation),
            }

        def download_button(conversation: Conversation, key: str | None = None):
            if not conversation.turns or key is None:
                return gr.DownloadButton(visible=bool(conversation.turns))
            folder = downloads / key
            folder.mkdir(exist_ok=True)
            path = folder / "conversation.md"
            path.write_text(conversation_markdown(conversation, model_name(generator)), encoding="utf-8")
            return gr.DownloadButton(value=str(path), visible=True)

        def model_input_info(prepared: Prepared) -> dict:
            fitted = prepared.fitted
            turns = ["no earlier turns yet", "the previous turn", "the last two turns"][
                min(len(prepared.conversation.turns), 2)
            ]
            info = (
                f"The model input is <b>{fitted.input_tokens:,} tokens</b>: the document "
                f"({fitted.kept_context_tokens:,} of its {fitted.context_tokens:,} tokens), then the "
                f"dialogue below ({turns}, then the question)."
            )
            if fitted.truncated:
                info += f"<br>{warning(fitted.notice)}"
            text = prepared.conversation.document.text
            kept_text = (
                "\n\n[…]\n\n".join(text[a:b] for a, b in fitted.kept_ranges) if fitted.truncated else ""
            )
            return {input_info: info, dialogue: prepared.dialogue, kept: kept_text}

        def details_of(prepared: Prepared, answer: Answer | None, turn: Turn | None, **extra) -> dict:
            fitted = prepared.fitted
            document = prepared.conversation.document
            evidence = None
            if turn is not None and turn.evidence is not None:
                evidence = {
                    **turn.evidence.as_dict(document.text),
                    "page": document.page_at(turn.evidence.start),
                }
            return {
                "question": prepared.question,
                "model_input": fitted.text,
                "truncated": fitted.truncated,
                "context_strategy": fitted.strategy,
                "kept_ranges": [list(r) for r in fitted.kept_ranges],
                "text": answer.text if answer else "",
                "done": bool(answer and answer.done),
                "seconds": answer.seconds if answer else None,
                "encoder_seconds": answer.encoder_seconds if answer else None,
                "input_tokens": answer.input_tokens if answer else fitted.input_tokens,
                "output_tokens": answer.output_tokens if answer else 0,
                "evidence": evidence,
                **extra,
            }

        class ClientWatch:
            """Whether the visitor still reads the updates. Gradio stops a closed page's answer itself;
            this catches an API client that joined the queue and never listens: its unread updates
            pile up (Gradio's per-session message queue) instead of draining."""

            def __init__(self, request: gr.Request) -> None:
                queues = getattr(getattr(demo, "_queue", None), "pending_messages_per_session", {})
                self.messages = queues.get(request.session_hash)
                self.last_read = time.monotonic()

            def gone(self) -> bool:
                if self.messages is None:
                    return False
                now = time.monotonic()
                if self.messages.qsize() <= 2:
                    self.last_read = now
                return now - self.last_read > not_listening_seconds

        def answer(key: str, stored: Conversation, prepared: Prepared, request: gr.Request) -> Iterator[dict]:
            """Wait for the generation slot, stream the answer, then store the turn. A clear or a new
            document made meanwhile wins: the answer stops at its next token and is not kept (the page
            then shows the conversation as it is; gradio_client sends no cancel, so this is the rule
            for the API too)."""
            conversation = prepared.conversation
            watch = ClientWatch(request)

            def not_kept(answer: Answer | None = None) -> dict:
                message = (
                    "The conversation was cleared or its document changed while this answer was being "
                    "written, so it was not kept."
                )
                return {
                    **shown(sessions.get(key)),
                    notice: warning(message),
                    details: details_of(prepared, answer, None, stored=False),
                }

            try:
                ticket = slot.ticket()
            except Busy as error:
                yield {notice: warning(f"{error} Your question stays in the box.")}
                return
            with ticket:
                yield {
                    chatbot: messages(conversation.document, conversation.turns, prepared.question),
                    question: "",  # the question is taken: the box is cleared once, now, and never after
                    notice: "",
                    details: details_of(prepared, None, None),
                    **model_input_info(prepared),
                }
                while not ticket.wait(WAIT_STEP_SECONDS):
                    if watch.gone():
                        log.info("a client stopped listening while waiting; its question is dropped")
                        return
                    if not sessions.holds(key, stored):
                        yield not_kept()
                        return
                    ahead = ticket.ahead
                    yield {
                        notice: f"Waiting for the model: {ahead} question{'s' * (ahead != 1)} ahead of yours."
                    }
                # The cut's notice now, not at the end: a notice shown meanwhile (a second question kept in
                # the box) must stay on the page after the answer.
                yield {notice: warning(prepared.fitted.notice) if prepared.fitted.truncated else ""}
                try:
                    final = None
                    for final in chat_rules.stream(prepared):
                        if not sessions.holds(key, stored):
                            yield not_kept(final)
                            return
                        pending = messages(
                            conversation.document, conversation.turns, prepared.question, final.text
                        )
                        yield {chatbot: pending}  # details (which repeats the document) only at the end
                        if watch.gone():
                            log.info("a client stopped listening; its answer is dropped")
                            return
                except Exception as error:  # ONNX Runtime raises its own types; the session must survive it
                    log.exception("generation failed")
                    failure = (
                        f"The model failed on this question ({type(error).__name__}: {str(error)[:300]}). "
                        "Your question is back in the box: send it again or press Clear."
                    )
                    yield {**shown(sessions.get(key)), question: prepared.question, notice: warning(failure)}
                    return
            new = chat_rules.finish(prepared, final)
            log.info(
                "answered in %.2f s (encoder %.2f s): %d tokens in, %d out%s",
                final.seconds,
                final.encoder_seconds,
                final.input_tokens,
                final.output_tokens,
                ", document cut to fit" if prepared.fitted.truncated else "",
            )
            if not sessions.replace(key, stored, new):  # changed after the last token
                yield not_kept(final)
                return
            yield {
                **shown(new),
                **model_input_info(prepared),  # again: an API client reads the last update only
                download: download_button(new, key),
                details: details_of(prepared, final, new.turns[-1], stored=True),
            }

        def forgotten_notice(key: str) -> dict | None:
            """A returning visitor whose conversation expired or was evicted: say so and show the page as
            it now is (the default document, an empty chat) instead of silently answering about another
            document. Their question stays in the box."""
            if not sessions.was_forgotten(key):
                return None
            conversation = sessions.get(key)  # starts over
            hours = session_ttl / 3600
            message = (
                f"This conversation was forgotten (after {hours:g} h without a question, or because the "
                "server holds a limited number), so the page is back on the default document. Your question "
                "is still in the box: send it again, or choose your document again first."
            )
            return {
                **shown(conversation),
                header_html: header(conversation.document),
                notice: warning(message),
            }

        def ask(question_text: str, request: gr.Request) -> Iterator[dict]:
            key = request.session_hash
            if (forgotten := forgotten_notice(key)) is not None:
                yield forgotten
                return
            stored = sessions.get(key)
            try:
                prepared = chat_rules.prepare(stored, question_text)
            except QuestionRejected as error:
                yield {notice: warning(str(error))}  # the question stays in its box
                return
            if not sessions.begin_generation(key, prepared.question):
                if sessions.generating(key) == prepared.question:  # Enter pressed twice, Send clicked
                    yield {notice: "That question is being answered."}
                else:
                    yield {
                        notice: warning(
                            "Your previous question is still being answered. This one stays "
                            "in the box: send it when that answer is done."
                        )
                    }
                return
            try:
                yield from answer(key, stored, prepared, request)
            finally:
                sessions.end_generation(key)

        def retry(request: gr.Request) -> Iterator[dict]:
            key = request.session_hash
            if (forgotten := forgotten_notice(key)) is not None:
                yield forgotten
                return
            stored = sessions.get(key)
            if not stored.turns:
                yield {notice: warning("Nothing to retry yet: ask a question first.")}
                return
            try:
                prepared = chat_rules.prepare(stored.without_last_turn(), stored.turns[-1].question)
            except QuestionRejected as error:
                yield {notice: warning(str(error))}
                return
            if not sessions.begin_generation(key):
                yield {
                    notice: warning("Your previous question is still being answered; retry when it is done.")
                }
                return
            try:
                yield from answer(key, stored, prepared, request)
            finally:
                sessions.end_generation(key)

        def clear(request: gr.Request) -> dict:
            conversation = sessions.get(request.session_hash).cleared()
            sessions.set(request.session_hash, conversation)
            return {
                **shown(conversation),
                notice: "The conversation was cleared.",
                input_info: "",
                dialogue: "",
                kept: "",
                details: None,
            }

        # --- documents: a new one starts the conversation over ---

        def switch(load, request: gr.Request) -> dict:
            try:
                new_document = load()
            except DocumentError as error:  # only the status changes: nothing else is lost
                return {document_status: warning(str(error))}
            log.info("document switched to %r (%d words)", new_document.title, new_document.words)
            conversation = Conversation(new_document)
            sessions.set(request.session_hash, conversation)
            return {
                **shown(conversation),
                header_html: header(new_document),
                document_status: f"Now answering questions about <b>{isolated(new_document.title)}</b>.",
                notice: "New document: the conversation starts over.",
                input_info: "",
                dialogue: "",
                kept: "",
                details: None,
            }

        def use_text(text: str, request: gr.Request) -> dict:
            return switch(lambda: document_from_text(text or ""), request)

        def use_file(path: str | None, request: gr.Request) -> dict:
            if not path:
                return {}
            return switch(lambda: load_document_bytes(Path(path).read_bytes(), Path(path).name), request)

        def use_url(address: str, request: gr.Request) -> dict:
            return switch(
                lambda: fetch_url((address or "").strip(), allow_loopback=allow_local_urls), request
            )

        def use_default(request: gr.Request) -> dict:
            return switch(lambda: document, request)

        # --- wiring ---
        chat_outputs = [
            header_html,  # a conversation that was forgotten is back on the default document
            chatbot,
            question,
            notice,
            input_info,
            dialogue,
            kept,
            details,
            document_view,
            download,
        ]
        document_outputs = [document_status, *chat_outputs]
        # Many questions may wait (GenerationSlot keeps the order and answers one at a time); "multiple":
        # a question sent while another is answered reaches ask(), which keeps it in the box with a notice.
        generate = {
            "concurrency_limit": None,  # GenerationSlot keeps the line: its length, its order, "busy"
            "concurrency_id": "chat",
            "trigger_mode": "multiple",
            "show_progress_on": [chatbot],
        }
        gr.on([question.submit, send.click], ask, [question], chat_outputs, api_name="chat", **generate)
        retry_button.click(retry, None, chat_outputs, api_name="retry", **generate)
        # No `cancels=`: a cancelled stream can deliver one last stale update after the clear's; instead
        # the answer notices the change at its next token, stops and shows the conversation as it is.
        clear_button.click(clear, None, chat_outputs, api_name="clear")
        # The Chatbot's own trash icon must reset the server-side conversation too.
        chatbot.clear(clear, None, chat_outputs, api_visibility="private")
        use_pasted.click(use_text, [pasted], document_outputs, api_name="use_text")
        upload.upload(use_file, [upload], document_outputs, api_name="use_file")
        use_url_button.click(use_url, [url], document_outputs, api_name="use_url")
        url.submit(use_url, [url], document_outputs, api_visibility="private")
        use_default_button.click(use_default, None, document_outputs, api_name="use_default")
        # A closed accordion cannot scroll: scroll when it opens, too.
        document_accordion.expand(None, js=f"() => {{ {SCROLL_JS} }}")
    demo.sessions = sessions  # for tests and monitoring: how many conversations are held
    return demo


def build_error_app(message: str) -> gr.Blocks:
    """The page served when the model cannot be loaded: the reason and the way out, instead of a chat."""
    with gr.Blocks(title="Chat with a document") as demo:
        gr.Markdown("## Chat with a document")
        gr.HTML(f"⚠️ <b>The model could not be loaded.</b> {literal(message)}", elem_id="load-error")
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
        help="the default document: a .txt, .md, .html or .pdf file (env CONTEXT_FILE)",
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
        help="the model's input limit; a longer document is cut to fit (env MAX_INPUT_TOKENS; "
        "default %(default)s; smaller is faster, see the README's table)",
    )
    parser.add_argument(
        "--context-strategy",
        choices=CONTEXT_STRATEGIES,
        default=env.get("CONTEXT_STRATEGY") or "relevant",
        help="what a document over the limit keeps: its passages most related to the question "
        "(relevant) or its beginning (head) (env CONTEXT_STRATEGY; default %(default)s)",
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
    parser.add_argument(
        "--allow-local-urls",
        action="store_true",
        default=env.get("ALLOW_LOCAL_URLS", "").lower() in ("1", "true", "yes"),
        help="let 'Fetch the page' read loopback addresses (127.0.0.1, localhost): for local use only, "
        "never on a public server (env ALLOW_LOCAL_URLS=1)",
    )
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help="waiting questions before 'busy'")
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=float(env.get("SESSION_TTL") or SESSION_TTL_SECONDS),
        help="seconds an idle conversation is kept (env SESSION_TTL; default %(default)s)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=int(env.get("MAX_SESSIONS") or MAX_SESSIONS),
        help="conversations kept at most; the least recently used go first (env MAX_SESSIONS)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Libraries' chatter that says nothing to whoever runs the app: per-request deprecation warnings
    # (Starlette via Gradio), bm25s's progress lines, trafilatura's notes on each page's markup.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name, level in (
        ("bm25s", logging.WARNING),
        ("trafilatura", logging.ERROR),
        ("htmldate", logging.ERROR),
    ):
        logging.getLogger(name).setLevel(level)
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
        generator.warmup(args.max_input_tokens)  # the first user's answer should be as fast as the rest
    except ModelLoadError as error:  # its message says which model, why, and how to fix it
        demo = build_error_app(str(error))
        log.error("%s\nServing a page that says so (no chat).", error)
    except Exception as error:  # an export ONNX Runtime loads but cannot run
        message = f"ONNX Runtime failed on a warm-up answer with {args.model}: {error}"
        demo = build_error_app(
            f"{message} Export the model again, or choose another with --model. {HOW_TO_FIX}"
        )
        log.exception("%s\nServing a page that says so (no chat).", message)
    else:
        log.info(
            "model %s (%s) ready on %d thread(s)",
            generator.model_id,
            "int8" if generator.files.quantized else "fp32 files",
            generator.threads,
        )
        demo = build_app(
            generator,
            document,
            max_input_tokens=args.max_input_tokens,
            max_new_tokens=args.max_new_tokens,
            context_strategy=args.context_strategy,
            allow_local_urls=args.allow_local_urls,
            queue_size=args.queue_size,
            session_ttl=args.session_ttl,
            max_sessions=args.max_sessions,
        )
    # Gradio's own queue holds what our generation slot's line cannot (it rarely fills).
    demo.queue(max_size=args.queue_size)
    # In Gradio's unit (MiB, which its message calls "Mb"), rounded up: a file between our limit and
    # Gradio's gets our message, which names the limits as the page does.
    upload_limit = f"{math.ceil(MAX_UPLOAD_BYTES / 2**20)}mb"
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=upload_limit)


if __name__ == "__main__":
    main()
