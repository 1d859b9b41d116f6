"""The document the chatbot answers questions about: loading, validation, HTML to text.

Standard library only (no torch, no third-party parsers): the app loads documents from uploads (.txt, .md,
.html), from pasted text and from a file given on the command line. Every problem is a DocumentError whose
message says which document, what is wrong and how to fix it, ready to show to the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MAX_FILE_BYTES = 1_000_000  # an upload larger than this is refused before decoding
MAX_CHARACTERS = 200_000  # ~40k words: far beyond the model's 7,000-token input, which truncates anyway
SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
TITLE_MAX_CHARACTERS = 80


class DocumentError(ValueError):
    """A document cannot be used; the message is meant for the person who supplied it."""


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def load_document_bytes(data: bytes, filename: str) -> Document:
    """A Document from an uploaded file's bytes; the suffix of ``filename`` says how to read it."""
    name = Path(filename).name or "the file"
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}. "
            "Upload a .txt, .md or .html file, or paste the text instead."
        )
    if len(data) > MAX_FILE_BYTES:
        raise DocumentError(
            f"{name} is {len(data) / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB. "
            "Upload a shorter document (the model reads only about the first 7,000 tokens anyway)."
        )
    if not data.strip():
        raise DocumentError(f"{name} is empty. Upload a file with some text in it.")
    if b"\x00" in data:
        raise DocumentError(
            f"{name} looks like a binary file (it contains NUL bytes), not text. "
            "Upload a plain-text, Markdown or HTML file saved as UTF-8."
        )
    try:
        raw = data.decode("utf-8-sig")  # -sig: also accept the byte-order mark some editors write
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"{name} is not valid UTF-8 text (byte {error.start}: {data[error.start : error.start + 1]!r}). "
            "Save it with UTF-8 encoding and upload it again."
        ) from None

    if suffix in (".html", ".htm"):
        title, text = html_to_text(raw)
    elif suffix in (".md", ".markdown"):
        title, text = _first_heading(raw), markdown_to_text(raw)
    else:
        title, text = None, raw
    return document_from_text(text, title=title, source=name)


def load_document_file(path: str | Path) -> Document:
    """A Document from a file on disk (the app's default document, or --context FILE)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"Cannot read the document {path}: {error.strerror or error}.") from None
    return load_document_bytes(data, path.name)


def document_from_text(text: str, title: str | None = None, source: str = "The pasted text") -> Document:
    """A Document from text (pasted, or decoded from a file); the title defaults to its first line."""
    text = _tidy(text)
    if not text:
        raise DocumentError(f"{source} has no text in it. Paste or upload a document with some text.")
    if len(text) > MAX_CHARACTERS:
        raise DocumentError(
            f"{source} has {len(text):,} characters; the limit is {MAX_CHARACTERS:,}. "
            "Use a shorter document (the model reads only about the first 7,000 tokens anyway)."
        )
    title = " ".join((title or text.splitlines()[0]).split())
    if len(title) > TITLE_MAX_CHARACTERS:
        title = title[: TITLE_MAX_CHARACTERS - 1].rstrip() + "…"
    return Document(title=title, text=text)


def _tidy(text: str) -> str:
    # Unify line ends, drop trailing spaces, and keep at most one blank line between paragraphs.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- Markdown: the model was trained on plain prose, so drop the syntax that is not words. ---

_HEADING = re.compile(r"^#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


def _first_heading(markdown: str) -> str | None:
    match = _HEADING.search(_FRONT_MATTER.sub("", markdown))
    return match.group(1) if match else None


def markdown_to_text(markdown: str) -> str:
    """Markdown as prose: headings without `#`, links and images as their text, no YAML front matter."""
    text = _FRONT_MATTER.sub("", markdown.replace("\r\n", "\n"))
    text = _HEADING.sub(r"\1", text)
    text = _IMAGE.sub(r"\1", text)
    return _LINK.sub(r"\1", text)


# --- HTML ---


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML page, one paragraph per block element."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    BLOCKS = frozenset(
        "p div br hr li ul ol h1 h2 h3 h4 h5 h6 title section article header footer nav aside main "
        "blockquote pre table tr td th figcaption dt dd".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.title: str | None = None
        self.first_h1: str | None = None
        self._capture: str | None = None  # "title" or "h1" while inside one
        self._captured: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if (tag == "title" and self.title is None) or (tag == "h1" and self.first_h1 is None):
            self._capture, self._captured = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skip_depth:
            self.skip_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if tag == self._capture:
            captured = " ".join("".join(self._captured).split()) or None
            if tag == "title":
                self.title = captured
            else:
                self.first_h1 = captured
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self._capture:
            self._captured.append(data)
            if self._capture == "title":
                return  # the page title is metadata, not part of the article's text
        self.parts.append(data)


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, text) of an HTML page: scripts and styles dropped, block elements as paragraph breaks.

    The title is the page's <title>, else its first <h1>, else None.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    # Inside a paragraph, runs of white space (including source line breaks) are one space, as in a browser.
    paragraphs = (" ".join(chunk.split()) for chunk in "".join(parser.parts).split("\n\n"))
    text = "\n\n".join(p for p in paragraphs if p)
    return parser.title or parser.first_h1, text
