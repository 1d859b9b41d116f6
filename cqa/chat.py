"""The conversation itself, without a server: turns, the history window, retry, clear, evidence, the
question-length rule, the sessions of a public server and its single generation slot.

    chat = Chat(generator)                                  # settings: input limit, new tokens, strategy
    prepared = chat.prepare(conversation, "Who wrote it?")  # QuestionRejected with a message for people
    for answer in chat.stream(prepared): ...                # streaming Answers
    conversation = chat.finish(conversation, prepared, answer)  # the new turn, with its evidence

app.py only lays out the page and wires these to it; tests drive them directly.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import count

from cqa.documents import Document, clean_line
from cqa.evidence import Evidence, find_evidence
from cqa.format import DEFAULT_MAX_INPUT_TOKENS, DEFAULT_TURNS, FittedInput, dialogue_part, fit_model_input
from cqa.generator import Answer, Seq2SeqGenerator

DEFAULT_MAX_NEW_TOKENS = 128
MAX_QUESTION_TOKENS = 1_000
MAX_QUESTION_CHARACTERS = 10_000  # checked before tokenizing, so a 5 MB "question" costs nothing
SESSION_TTL_SECONDS = 2 * 3600  # an idle conversation is forgotten after this
MAX_SESSIONS = 200  # at most this many conversations are kept (the least recently used go first)

_conversation_ids = count(1)


class QuestionRejected(ValueError):
    """A question that is not sent to the model; the message says why and what to do."""


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    seconds: float
    input_tokens: int
    output_tokens: int
    evidence: Evidence | None = None

    @property
    def stats(self) -> str:
        return f"{self.seconds:.1f} s · {self.input_tokens:,} tokens in · {self.output_tokens} out"


@dataclass(frozen=True)
class Conversation:
    """One session's state: the document and the turns so far. Immutable: every change is a new value,
    and a new document or a clear gives a new ``id``, so an answer that finishes late can tell that the
    conversation it belongs to is gone."""

    document: Document
    turns: tuple[Turn, ...] = ()
    id: int = field(default_factory=lambda: next(_conversation_ids))

    @property
    def history(self) -> list[tuple[str, str]]:
        return [(turn.question, turn.answer) for turn in self.turns]

    def cleared(self) -> Conversation:
        return Conversation(self.document)

    def without_last_turn(self) -> Conversation:
        return replace(self, turns=self.turns[:-1])


@dataclass(frozen=True)
class Prepared:
    """What the model will see for one question: the fitted input of ``conversation`` + ``question``."""

    conversation: Conversation
    question: str
    fitted: FittedInput

    @property
    def dialogue(self) -> str:
        return dialogue_part(self.conversation.history, self.question)


class Chat:
    """The rules of one conversation turn, for any number of sessions (it keeps no session state)."""

    def __init__(
        self,
        generator: Seq2SeqGenerator,
        *,
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        context_strategy: str = "relevant",
        turns: int = DEFAULT_TURNS,
    ) -> None:
        self.generator = generator
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.context_strategy = context_strategy
        self.turns = turns

    def check_question(self, question: str) -> str:
        """The question as it will be sent (stripped), or QuestionRejected."""
        question = (question or "").strip()
        if not question:
            raise QuestionRejected("Type a question first, then press Enter.")
        too_long = (
            f"Your question is too long; the limit is {MAX_QUESTION_TOKENS:,} tokens. "
            "Shorten it and send it again."
        )
        if len(question) > MAX_QUESTION_CHARACTERS:
            raise QuestionRejected(too_long)
        tokens = self.generator.count_tokens(question)
        if tokens > MAX_QUESTION_TOKENS:
            raise QuestionRejected(too_long.replace("too long", f"{tokens:,} tokens long"))
        return question

    def prepare(self, conversation: Conversation, question: str) -> Prepared:
        """Check ``question`` and fit the model input (QuestionRejected when it cannot be asked)."""
        question = self.check_question(question)
        try:
            fitted = fit_model_input(
                self.generator.tokenizer,
                conversation.document.text,
                conversation.history,
                question,
                self.max_input_tokens,
                turns=self.turns,
                strategy=self.context_strategy,
            )
        except ValueError as error:  # the history and the question alone are over the limit
            raise QuestionRejected(f"{error} Press Clear to start a new conversation.") from None
        return Prepared(conversation, question, fitted)

    def stream(self, prepared: Prepared) -> Iterator[Answer]:
        """The answer as it grows; the last one has ``done=True``."""
        return self.generator.stream(prepared.fitted.text, max_new_tokens=self.max_new_tokens)

    def finish(self, prepared: Prepared, answer: Answer) -> Conversation:
        """``prepared.conversation`` with the answered turn appended (and its evidence located)."""
        document = prepared.conversation.document.text
        evidence = find_evidence(document, answer.text, prepared.question, prefer=prepared.fitted.kept_ranges)
        turn = Turn(
            prepared.question,
            answer.text,
            answer.seconds,
            answer.input_tokens,
            answer.output_tokens,
            evidence,
        )
        return replace(prepared.conversation, turns=(*prepared.conversation.turns, turn))


# --- Sessions: what a public server keeps per visitor, bounded in time and number ---


@dataclass
class _Session:
    conversation: Conversation
    last_used: float
    generating: str | None = None  # the question being answered, if any


class Sessions:
    """Conversations by session key (Gradio's session hash), with a time to live and a capacity.

    Thread-safe. A conversation changes only through :meth:`replace` when an answer finishes (so a
    clear or a new document made meanwhile wins) or :meth:`set` (clear, new document)."""

    def __init__(
        self,
        default_document: Document,
        ttl_seconds: float = SESSION_TTL_SECONDS,
        capacity: int = MAX_SESSIONS,
    ) -> None:
        self.default_document = default_document
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._forgotten: OrderedDict[str, None] = OrderedDict()  # recently expired keys (keys only)

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        # Sessions generating right now stay: their answer is on its way to someone.
        expired = [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_seconds]
        forgotten = [k for k in expired if not self._sessions[k].generating]
        for key in forgotten:
            self._forget(key)
        while len(self._sessions) > self.capacity:
            oldest = next((k for k, s in self._sessions.items() if not s.generating), None)
            if oldest is None:
                break
            self._forget(oldest)
            forgotten.append(oldest)
        if forgotten:
            _return_freed_memory()

    def _forget(self, key: str) -> None:
        del self._sessions[key]
        self._forgotten[key] = None  # keys only: enough to tell a returning visitor what happened
        while len(self._forgotten) > 10 * self.capacity:
            self._forgotten.popitem(last=False)

    def _session(self, key: str) -> _Session:
        now = time.monotonic()
        if now - self._last_sweep > min(1.0, self.ttl_seconds) or len(self._sessions) > self.capacity:
            self._expire(now)  # a sweep per second at most: an answer checks its session at every token
            self._last_sweep = now
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(Conversation(self.default_document), now)
            self._forgotten.pop(key, None)
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def get(self, key: str) -> Conversation:
        with self._lock:
            return self._session(key).conversation

    def holds(self, key: str, conversation: Conversation) -> bool:
        """Whether the session still holds ``conversation`` (no clear, no new document since). Cheap: an
        answer asks at every token, so this neither sweeps nor touches the session."""
        with self._lock:
            session = self._sessions.get(key)
            return session is not None and session.conversation is conversation

    def was_forgotten(self, key: str) -> bool:
        """Whether ``key``'s conversation expired or was evicted (it would start over now)."""
        with self._lock:
            if key not in self._forgotten and key in self._sessions:
                self._expire(time.monotonic())
            return key in self._forgotten

    def generating(self, key: str) -> str | None:
        """The question the session's answer in progress is for, if any."""
        with self._lock:
            session = self._sessions.get(key)
            return session.generating if session else None

    def set(self, key: str, conversation: Conversation) -> None:
        with self._lock:
            self._session(key).conversation = conversation

    def replace(self, key: str, expected: Conversation, new: Conversation) -> bool:
        """Store ``new`` if the session still holds ``expected`` (else nothing changes: False)."""
        with self._lock:
            session = self._session(key)
            if session.conversation is not expected:
                return False
            session.conversation = new
            return True

    def begin_generation(self, key: str, question: str = "?") -> bool:
        """Claim the session's one pending generation for ``question``; False when it already has one."""
        with self._lock:
            session = self._session(key)
            if session.generating:
                return False
            session.generating = question
            return True

    def end_generation(self, key: str) -> None:
        with self._lock:
            if key in self._sessions:
                self._sessions[key].generating = None
                self._sessions[key].last_used = time.monotonic()


def _return_freed_memory() -> None:
    """Give freed memory back to the system. glibc keeps freed mid-sized blocks (documents of a few
    hundred kB) in its heap, so without this a server's memory only ever grows (measured in
    tests/test_chat.py: 60 MB of expired documents stayed resident)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class Busy(RuntimeError):
    """The line for the generation slot is full."""


class GenerationSlot:
    """One generation at a time (two CPU cores serve one answer fastest), first come, first served,
    with a bounded line. Waiting is done in short steps so that the caller can notice a visitor who left.

        with slot.ticket() as ticket:
            while not ticket.wait(1.0):
                report(ticket.ahead)
            ...generate...
    """

    def __init__(self, max_waiting: int = 16) -> None:
        self.max_waiting = max_waiting
        self._condition = threading.Condition()
        self._line: list[object] = []  # the ticket holding the slot is first

    def ticket(self) -> _Ticket:
        with self._condition:
            if len(self._line) > self.max_waiting:
                raise Busy(
                    f"The app is busy: {len(self._line) - 1} questions are waiting. Try again in a minute."
                )
            ticket = _Ticket(self)
            self._line.append(ticket)
            return ticket

    @property
    def waiting(self) -> int:
        with self._condition:
            return max(0, len(self._line) - 1)


class _Ticket:
    def __init__(self, slot: GenerationSlot) -> None:
        self._slot = slot

    @property
    def ahead(self) -> int:
        """How many questions will be answered before this one (0 once it holds the slot)."""
        with self._slot._condition:
            return self._slot._line.index(self) if self in self._slot._line else 0

    def wait(self, timeout: float) -> bool:
        """True once this ticket holds the slot; False after ``timeout`` seconds without it."""
        with self._slot._condition:
            return self._slot._condition.wait_for(lambda: self._slot._line[0] is self, timeout)

    def leave(self) -> None:
        with self._slot._condition:
            if self in self._slot._line:
                self._slot._line.remove(self)
                self._slot._condition.notify_all()

    def __enter__(self) -> _Ticket:
        return self

    def __exit__(self, *exc_info) -> None:
        self.leave()


# --- Export ---


def conversation_markdown(conversation: Conversation, model: str = "") -> str:
    """The conversation as a Markdown file: the document's title, each question, answer, evidence, timing."""
    document = conversation.document
    lines = [f"# Conversation about “{document.title}”", ""]
    if document.source:
        lines += [f"Document: {document.source}", ""]
    if model:
        lines += [f"Model: {model}", ""]
    if not conversation.turns:
        lines += ["(No questions yet.)", ""]
    for number, turn in enumerate(conversation.turns, 1):
        # One line each, control characters dropped: a question cannot add headings or reorder the file.
        question, answer = (" ".join(clean_line(text).split()) for text in (turn.question, turn.answer))
        lines += [f"## {number}. {question}", "", answer or "(no answer)", ""]
        if turn.evidence is not None:
            page = document.page_at(turn.evidence.start)
            where = f" (page {page})" if page else ""
            quote = " ".join(turn.evidence.quote(document.text).split())
            lines += [
                f"> {quote}",
                ">",
                f"> — the document{where}, characters {turn.evidence.start:,}-{turn.evidence.end:,}",
                "",
            ]
        else:
            lines += ["*(Not found in the document.)*", ""]
        lines += [f"*{turn.stats}*", ""]
    return "\n".join(lines)
