"""The document the chatbot answers questions about: uploads, pasted text, PDF files and web pages.

Every way in ends in a Document (title, plain text, where it came from, PDF page starts). Every problem is a
DocumentError whose message says which document, what is wrong and how to fix it, ready to show to the user.

Hostile input must not stall the server (one upload is read while other sessions chat), so nothing here
runs a backtracking regex over a document:
- Markdown goes through markdown-it-py, with a deadline checked at every parser step;
- HTML goes through lxml (libxml2, linear) and trafilatura for the main text, the latter only on trees small
  enough to finish in time;
- PDF goes through pypdf in a child process that is killed when it takes too long;
- web pages are fetched only from public addresses (see check_url), with time-outs and a size cap.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import functools
import http.client
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import lxml.etree
import lxml.html
from markdown_it import MarkdownIt

# --- Limits: one definition each; LIMITS_TEXT states them for people (UI, README, messages). ---

MAX_FILE_BYTES = 1_000_000  # a text, Markdown or HTML file (or web page) larger than this is refused unread
MAX_PDF_BYTES = 10_000_000  # PDFs carry fonts and images, so their files are larger for the same text
MAX_PDF_PAGES = 300
MAX_CHARACTERS = 200_000  # ~40k words of extracted text: far beyond the model's 7,000-token input
MAX_UPLOAD_BYTES = max(MAX_FILE_BYTES, MAX_PDF_BYTES)  # Gradio's cap, so that our messages explain the rest
SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
TITLE_MAX_CHARACTERS = 80

MARKDOWN_SECONDS = 1.5  # markdown-it-py is pure Python: ~20 µs per `[`, so 1 MB of them would take ~20 s
HTML_MAX_ELEMENTS = 10_000  # trafilatura costs ~0.1 ms per element; larger pages get the plain lxml text
PDF_SECONDS = 20.0  # pypdf is pure Python and some damaged files make it loop
PDF_MEMORY_BYTES = 2 * 1024**3  # the PDF child's address-space cap (decompression bombs)
MAX_REDIRECTS = 5
FETCH_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:g} MB"


LIMITS_TEXT = (
    f"Text, Markdown or HTML files and web pages up to {_megabytes(MAX_FILE_BYTES)}, "
    f"PDF up to {_megabytes(MAX_PDF_BYTES)} and {MAX_PDF_PAGES} pages; "
    f"at most {MAX_CHARACTERS:,} characters of text."
)


class DocumentError(ValueError):
    """A document cannot be used; the message is meant for the person who supplied it."""


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    source: str = ""  # the file name or URL it came from ("" for pasted text)
    page_starts: tuple[int, ...] = ()  # PDF: the offset in `text` where page 1, 2, ... starts

    @property
    def words(self) -> int:
        return len(self.text.split())

    def page_at(self, offset: int) -> int | None:
        """The 1-based page that holds text[offset]; None for documents without pages."""
        if not self.page_starts or offset < 0:
            return None
        return max(1, bisect.bisect_right(self.page_starts, offset))


# --- Loading: uploads, files on disk, pasted text ---


def load_document_bytes(data: bytes, filename: str) -> Document:
    """A Document from an uploaded file's bytes; the suffix of ``filename`` says how to read it."""
    name = clean_line(Path(filename).name) or "the file"
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{name}: unsupported file type {clean_line(suffix) or '(no extension)'!r}. "
            "Upload a .txt, .md, .html or .pdf file, or paste the text instead."
        )
    if suffix == ".pdf":
        return _load_pdf(data, name)
    if len(data) > MAX_FILE_BYTES:
        raise DocumentError(
            f"{name} is {len(data) / 1e6:.1f} MB; the limit is {_megabytes(MAX_FILE_BYTES)}. {LIMITS_TEXT} "
            "Upload a shorter document (the model reads at most 7,000 tokens of it anyway)."
        )
    if not data.strip():
        raise DocumentError(f"{name} is empty. Upload a file with some text in it.")
    raw = _decode_upload(data, name, html=suffix in (".html", ".htm"))
    if suffix in (".html", ".htm"):
        title, text = html_to_text(raw)
        if not _tidy(text) and raw.count("<") > 256:  # libxml2 gives up past 256 nested elements
            raise DocumentError(
                f"{name}: no text could be read from its HTML (is it nested more than 256 levels deep?). "
                "Open it in a browser and paste its text instead."
            )
    elif suffix in (".md", ".markdown"):
        title, text = markdown_to_text(raw, name)
    else:
        title, text = None, raw
    return _document(_tidy(text), title, name, source=name)


def load_document_file(path: str | Path) -> Document:
    """A Document from a file on disk (the app's default document, or --context FILE)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"Cannot read the document {path}: {error.strerror or error}.") from None
    return load_document_bytes(data, path.name)


def document_from_text(text: str, title: str | None = None, source: str = "The pasted text") -> Document:
    """A Document from pasted text; the title defaults to its first line, ``source`` names it in messages."""
    return _document(_tidy(text), title, clean_line(source))


def _document(
    text: str, title: str | None, name: str, source: str = "", page_starts: tuple[int, ...] = ()
) -> Document:
    """The checks every document passes, on text already tidied (PDF page offsets point into it)."""
    if not text:
        raise DocumentError(f"{name} has no text in it. Paste or upload a document with some text.")
    if len(text) > MAX_CHARACTERS:
        raise DocumentError(
            f"{name} has {len(text):,} characters of text; the limit is {MAX_CHARACTERS:,}. "
            "Use a shorter document (the model reads at most 7,000 tokens of it anyway)."
        )
    title = clean_line(title or "") or clean_line(text[: 4 * TITLE_MAX_CHARACTERS].split("\n", 1)[0])
    if len(title) > TITLE_MAX_CHARACTERS:
        title = title[: TITLE_MAX_CHARACTERS - 1].rstrip() + "…"
    return Document(title=title, text=text, source=source, page_starts=page_starts)


def clean_line(text: str) -> str:
    """``text`` as one safe line: white space collapsed, control and format characters removed.

    Format characters (Unicode category Cf) include the bidi overrides and isolates that would reverse the
    rest of a header line; zero-width joiners stay (emoji and several scripts need them).
    """
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif category != "Cf" or char in "\u200c\u200d":
            kept.append(char)
    return " ".join("".join(kept).split())


def _decode_upload(data: bytes, name: str, html: bool = False) -> str:
    # UTF-16 and UTF-32 files (Windows "Unicode" text) say so with a byte-order mark; check those first,
    # since their text is full of NUL bytes. UTF-32-LE's mark starts with UTF-16-LE's, hence the order.
    for mark, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(mark):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                raise DocumentError(
                    f"{name} starts like {codec.upper()} text but is not valid {codec.upper()}. "
                    "Save it with UTF-8 encoding and upload it again."
                ) from None
    if b"\x00" in data:
        raise DocumentError(
            f"{name} looks like a binary file (it contains NUL bytes), not text. "
            "Upload a plain-text, Markdown, HTML or PDF file; save text as UTF-8."
        )
    try:
        return data.decode("utf-8-sig")  # -sig: also accept the byte-order mark some editors write
    except UnicodeDecodeError as error:
        declared = _declared_charset(data) if html else None  # a saved web page may say its charset
        with contextlib.suppress(LookupError, UnicodeDecodeError):
            if declared:
                return data.decode(declared)
        raise DocumentError(
            f"{name} is not valid UTF-8 text (byte {error.start}: {data[error.start : error.start + 1]!r}). "
            "Save it with UTF-8 encoding and upload it again."
        ) from None


def _tidy(text: str) -> str:
    # Unify line ends, drop trailing spaces, and keep at most one blank line between paragraphs.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- Markdown: the model was trained on plain prose, so keep the words and drop the syntax. ---


class _OutOfTime(Exception):
    pass


def _stop_after(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _OutOfTime


def _check_deadline(state, *_args) -> bool:
    """A markdown-it rule that matches nothing: it stops the parse once the deadline has passed."""
    _stop_after(state.env["deadline"])
    return False


def _markdown_parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark")  # maxNesting 20: deeper quotes and lists stay text
    # Checked before every block and every inline position, so no input runs past MARKDOWN_SECONDS.
    parser.block.ruler.before(
        "table", "deadline", _check_deadline, {"alt": ["paragraph", "reference", "blockquote", "list"]}
    )
    parser.inline.ruler.before("text", "deadline", _check_deadline)
    return parser


_MARKDOWN = _markdown_parser()  # rules are shared read-only; each parse has its own state


def markdown_to_text(markdown: str, name: str = "The Markdown") -> tuple[str | None, str]:
    """(first heading, text) of a Markdown document: headings without `#`, links and images as their text,
    code kept as text, inline HTML tags dropped, no YAML front matter; one block per paragraph."""
    markdown = _strip_front_matter(markdown.replace("\r\n", "\n"))
    deadline = time.monotonic() + MARKDOWN_SECONDS
    try:
        return _markdown_blocks(_MARKDOWN.parse(markdown, {"deadline": deadline}), deadline)
    except (_OutOfTime, RecursionError):
        raise DocumentError(
            f"{name}: reading its Markdown took over {MARKDOWN_SECONDS:g} s, so it was stopped (it is very "
            "long, or full of stray markup such as unmatched brackets). Shorten it, or save it as .txt "
            "to use it as plain text."
        ) from None


def _markdown_blocks(tokens, deadline: float) -> tuple[str | None, str]:
    title, blocks, in_heading = None, [], False
    for token in tokens:
        _stop_after(deadline)  # thousands of HTML blocks take a while to turn into text
        if token.type == "heading_open":
            in_heading = True
        elif token.type == "inline":
            text = _inline_text(token.children or [])
            if in_heading and title is None:
                title = text
            blocks.append(text)
            in_heading = False
        elif token.type in ("fence", "code_block"):
            blocks.append(token.content.rstrip("\n"))
        elif token.type == "html_block":
            blocks.append(_lxml_text(token.content))
    return title, "\n\n".join(block for block in blocks if block.strip())


def _strip_front_matter(markdown: str) -> str:
    # YAML front matter: a first line "---" up to the next line "---" (str.find, not a regex: linear).
    if not markdown.startswith("---\n"):
        return markdown
    end = markdown.find("\n---\n", 3)
    if end == -1:
        return markdown[3:].lstrip("\n") if markdown.rstrip().endswith("\n---") else markdown
    return markdown[end + len("\n---\n") :]


def _inline_text(tokens) -> str:
    parts = []
    for token in tokens:
        if token.type in ("text", "code_inline", "text_special"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif token.type == "image":
            parts.append(_inline_text(token.children or []))  # the alt text, itself Markdown
    return "".join(parts)


# --- HTML: trafilatura keeps the main text (no navigation, banners, sidebars, footers, scripts). ---

_SKIP_TAGS = ("head", "script", "style", "noscript", "template", "svg", "iframe", "object")
_BLOCK_TAGS = (
    "p div br hr li ul ol h1 h2 h3 h4 h5 h6 section article header footer nav aside main blockquote pre "
    "table tr td th caption figcaption dt dd form fieldset address details summary"
).split()


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, main text) of an HTML page: the title is its first <h1>, else its <title>, else None.

    trafilatura finds the article; when it finds none (or the page is too large to analyse in time) the
    page's visible text is kept instead. One paragraph per block, separated by blank lines.
    """
    tree = _parse_html(html)
    if tree is None:
        return None, ""
    title = next((clean_line(e.text_content()) for e in tree.iter("h1")), None) or _html_title(tree)
    if sum(1 for _ in tree.iter()) <= HTML_MAX_ELEMENTS:
        found = _trafilatura().bare_extraction(tree, include_comments=False, config=_trafilatura_config())
        paragraphs = [line.strip() for line in (found.text or "").split("\n")] if found else []
        if any(paragraphs):
            return title, "\n\n".join(p for p in paragraphs if p)
    return title, _lxml_text(html)


def _trafilatura():
    import trafilatura  # here, not at the top: ~0.2 s to import, and the PDF worker needs none of it

    return trafilatura


@functools.cache
def _trafilatura_config():
    from trafilatura.settings import use_config

    config = use_config()
    # By default a main text under 250 characters sends trafilatura to fallbacks that keep the navigation.
    config["DEFAULT"]["MIN_EXTRACTED_SIZE"] = "1"
    return config


def _html_title(tree) -> str | None:
    return next((clean_line(e.text_content()) for e in tree.iter("title")), None) or None


def _parse_html(html: str):
    # Bytes with an explicit encoding: lxml refuses str input that carries an XML encoding declaration.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        return lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
    except (lxml.etree.ParserError, ValueError):  # "Document is empty" and the like
        return None


def _lxml_text(html: str) -> str:
    """The visible text of a page with lxml alone: scripts and styles dropped, blocks as paragraphs."""
    tree = _parse_html(html)
    if tree is None:
        return ""
    for element in list(tree.iter(*_SKIP_TAGS)):
        if element.getparent() is not None:
            element.drop_tree()  # keeps the tail text, which belongs to the parent
    for element in tree.iter(*_BLOCK_TAGS):
        element.text = "\n\n" + (element.text or "")
        element.tail = "\n\n" + (element.tail or "")
    # Inside a paragraph, runs of white space (including source line breaks) are one space, as in a browser.
    paragraphs = (" ".join(chunk.split()) for chunk in tree.text_content().split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


# --- PDF: pypdf in a child process, killed after PDF_SECONDS ---


def _load_pdf(data: bytes, name: str) -> Document:
    if len(data) > MAX_PDF_BYTES:
        raise DocumentError(
            f"{name} is {len(data) / 1e6:.1f} MB; the limit for PDF files is {_megabytes(MAX_PDF_BYTES)} "
            f"and {MAX_PDF_PAGES} pages. Upload fewer pages (split the PDF) or paste the text."
        )
    if b"%PDF-" not in data[:1024]:
        raise DocumentError(f"{name} is not a PDF file (it lacks the %PDF header). Upload the real PDF.")
    result = _run_pdf_worker(data, name)
    error = result.get("error")
    if error == "encrypted":
        raise DocumentError(
            f"{name} is protected with a password, so its text cannot be read. "
            "Save an unprotected copy (print to PDF) and upload that, or paste the text."
        )
    if error == "pages":
        raise DocumentError(
            f"{name} has {result['pages']:,} pages; the limit is {MAX_PDF_PAGES}. "
            "Upload the pages you need (split the PDF) or paste the text."
        )
    if error:
        raise DocumentError(
            f"{name} is damaged or not a PDF that can be read ({clean_line(result.get('detail', '?'))}). "
            "Open it and save or print it to a new PDF, or paste the text."
        )
    return _pdf_document(result["pages"], result.get("title"), name, result.get("stopped", False))


def _pdf_document(pages: list[str], title: str | None, name: str, stopped: bool) -> Document:
    if not any(page.strip() for page in pages):
        raise DocumentError(
            f"{name} has no text layer: it looks like a scan or a set of images. Run OCR on it first "
            "(e.g. ocrmypdf) or paste the text."
        )
    if stopped:
        raise DocumentError(
            f"{name} has more than {MAX_CHARACTERS:,} characters of text (the limit; reached on page "
            f"{len(pages)}). Upload fewer pages or paste the part you need."
        )
    text, starts = "", []
    for page in pages:
        if page and text:
            text += "\n\n"
        starts.append(len(text))
        text += page
    return _document(text, title, name, source=name, page_starts=tuple(starts))


def _run_pdf_worker(data: bytes, name: str) -> dict:
    """Read the PDF in `python -m cqa.documents --pdf-worker`; kill it after PDF_SECONDS."""
    package_root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cqa.documents", "--pdf-worker"],
            input=data,
            capture_output=True,
            timeout=PDF_SECONDS,
            cwd=package_root,
            check=False,
        )  # on a time-out, subprocess.run kills the child and reaps it: nothing is left behind
    except subprocess.TimeoutExpired:
        raise DocumentError(
            f"{name} took longer than {PDF_SECONDS:g} s to read, so reading it was stopped (damaged or "
            "unusually complex PDF). Save or print it to a new PDF, or paste the text."
        ) from None
    try:
        return json.loads(done.stdout)
    except ValueError:  # killed for memory, or crashed
        return {"error": "damaged", "detail": f"the PDF reader stopped with exit status {done.returncode}"}


def _read_pdf_pages(data: bytes) -> dict:
    """In the child: {"pages": [tidy text per page], "title", "stopped"} or {"error": kind, ...}."""
    import io

    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are encrypted with an owner password only: the empty user password opens them.
            try:
                opened = reader.decrypt("")
            except Exception:  # e.g. AES without the cryptography package
                opened = False
            if not opened:
                return {"error": "encrypted"}
        count = len(reader.pages)
        if count > MAX_PDF_PAGES:
            return {"error": "pages", "pages": count}
        pages, characters = [], -2
        for page in reader.pages:
            pages.append(_tidy(page.extract_text() or ""))
            if pages[-1]:  # counted with the blank line that _pdf_document puts between pages
                characters += len(pages[-1]) + 2
            if characters > MAX_CHARACTERS:  # no need to read the rest
                return {"pages": pages, "stopped": True}
        title = reader.metadata.title if reader.metadata else None
        return {"pages": pages, "title": title if isinstance(title, str) else None}
    except Exception as error:  # a hostile file raises anything; the parent explains it
        return {"error": "damaged", "detail": f"{type(error).__name__}: {str(error)[:200]}"}


def _pdf_worker_main() -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (PDF_MEMORY_BYTES, PDF_MEMORY_BYTES))
    result = _read_pdf_pages(sys.stdin.buffer.read())
    sys.stdout.write(json.dumps(result))


# --- Web pages: fetched only from public addresses ---


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed check_url: connect only to ``addresses`` (no second DNS lookup)."""

    scheme: str
    host: str  # as in the URL, lower case, without brackets (the Host header and the TLS name)
    port: int
    path: str  # path and query, never empty
    addresses: tuple[str, ...]  # every address the host resolved to, all of them allowed

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}[self.scheme]
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def check_url(url: str, allow_loopback: bool = False) -> CheckedURL:
    """The URL's parts and addresses, or a DocumentError when it is not a public http(s) address.

    Refused: other schemes, user names in URLs, and any host with an address that is loopback (unless
    ``allow_loopback``: local use and tests), private, link-local (which holds the cloud metadata service),
    multicast, unspecified, reserved or otherwise not global, IPv4 written inside IPv6 included.
    """
    shown = clean_line(url)[:200] or "(empty)"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise DocumentError(f"{shown} is not a valid web address ({error}).") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise DocumentError(f"{shown}: only http:// and https:// addresses can be fetched.")
    if parts.username is not None or parts.password is not None:
        raise DocumentError(f"{shown}: addresses with a user name or password are not supported.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DocumentError(f"{shown} has no host name. Give an address like https://example.com/post.")
    try:  # the ASCII form of international names: it goes into the Host header and the TLS name
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise DocumentError(f"{shown}: {host} is not a valid host name.") from None
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port, shown)
    for address in addresses:
        reason = _refusal(address, allow_loopback)
        if reason:
            raise DocumentError(
                f"{shown}: {host} is at {address}, {reason}; only public web addresses can be fetched."
            )
    # Spaces and non-ASCII characters percent-encoded, as a browser sends them; the rest as written.
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_URL_PUNCTUATION)
    return CheckedURL(scheme, host, port, path, tuple(str(a) for a in addresses))


_URL_PUNCTUATION = "!#$%&'()*+,-./:;=?@[]^_`{|}~"
_IPV4_SPELLING = re.compile(r"[0-9a-fA-FxX.]+")  # decimal, hex and octal forms like 2130706433, 0x7f.1


def _resolve(host: str, port: int, shown: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    if _IPV4_SPELLING.fullmatch(host):
        with contextlib.suppress(OSError):  # inet_aton reads the spellings browsers and resolvers accept
            return [ipaddress.IPv4Address(socket.inet_aton(host))]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise DocumentError(f"{shown}: the host {host} was not found. Check the address.") from None
    # Scope ids ("fe80::1%eth0") are dropped: the address alone decides.
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]): None for info in found}
    return list(addresses)


# Special-purpose ranges that Python 3.11's is_global still calls global: IETF protocol assignments
# (192.0.0.0/24, e.g. 192.0.0.8), the deprecated 6to4 relay anycast (192.88.99.0/24), IPv6 documentation
# (3fff::/20, 2001:db8::/32).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "3fff::/20", "2001:db8::/32")
)


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> str | None:
    """Why ``address`` must not be fetched from, or None. IPv4 inside IPv6 is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _refusal(embedded, allow_loopback)
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, reason in (
        (address.is_unspecified, "an unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
        (
            any(address in network for network in _NOT_PUBLIC if network.version == address.version),
            "a special-purpose address",
        ),
    ):
        if test:
            return reason
    return None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address; ``host`` is still the name sent in the Host header."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = self.socket = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified against ``host`` (also sent as SNI)."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self.socket = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(
    url: str, allow_loopback: bool = False, *, timeout: float = 10.0, max_bytes: int = MAX_FILE_BYTES
) -> Document:
    """The main text of a web page (HTML or plain text), fetched safely; see check_url for what is refused.

    Redirects are followed by hand (at most MAX_REDIRECTS), each target checked before connecting. The
    whole fetch, redirects included, takes at most about ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    target = check_url(url, allow_loopback)
    for _ in range(MAX_REDIRECTS + 1):
        status, headers, body = _get(target, deadline, max_bytes)
        location = headers.get("Location")
        if status in (301, 302, 303, 307, 308) and location:
            target = check_url(urljoin(target.url, location.strip()), allow_loopback)
            continue
        if status != 200:
            raise DocumentError(f"{target.url}: the server answered {status}. Check the address.")
        return _page_document(target.url, headers, body)
    raise DocumentError(f"{clean_line(url)[:200]}: more than {MAX_REDIRECTS} redirects; not followed.")


def _get(target: CheckedURL, deadline: float, max_bytes: int) -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body) of one GET; the body only for a 200 of an accepted type."""
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    last_error: Exception | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = kind(address, target.host, target.port, timeout=remaining)
        # A server that sends one byte at a time would restart every socket time-out: cut it at the deadline.
        watchdog = threading.Timer(remaining, _shut_down, (connection,))
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request(
                "GET",
                target.path,
                headers={
                    "User-Agent": "blogpost-cqa (document fetcher)",
                    "Accept": ", ".join(FETCH_CONTENT_TYPES),
                    "Accept-Encoding": "identity",
                },
            )
            response = connection.getresponse()
            if response.status != 200:
                return response.status, response.headers, b""
            _check_response_headers(target.url, response, max_bytes)
            return response.status, response.headers, _read_body(target.url, response, max_bytes, deadline)
        except ssl.SSLCertVerificationError as error:
            raise DocumentError(
                f"{target.url}: the site's certificate could not be verified ({error.verify_message})."
            ) from None
        except (OSError, http.client.HTTPException) as error:
            last_error = error
        finally:
            watchdog.cancel()
            connection.close()
    if last_error is None or isinstance(last_error, TimeoutError) or time.monotonic() >= deadline:
        raise DocumentError(
            f"{target.url}: the server did not answer in time. "
            "Try again later, or save the page and upload it."
        )
    raise DocumentError(f"{target.url} could not be fetched ({last_error}). Check the address.")


def _shut_down(connection: http.client.HTTPConnection) -> None:
    # Our own reference: http.client sets connection.sock to None once the response is being read from a
    # server that ends it by closing the connection, which is exactly when a slow drip must be cut.
    sock = getattr(connection, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _check_response_headers(url: str, response: http.client.HTTPResponse, max_bytes: int) -> None:
    if not response.getheader("Content-Type"):
        raise DocumentError(f"{url}: the server did not say what kind of document it is; not read.")
    kind = response.headers.get_content_type()
    if kind not in FETCH_CONTENT_TYPES:
        raise DocumentError(
            f"{url} is {kind}, not a web page or plain text. Download it and upload the file instead."
        )
    encoding = (response.getheader("Content-Encoding") or "identity").lower()
    if encoding != "identity":
        raise DocumentError(f"{url}: the server sent {encoding}-compressed content, which is not read.")
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise DocumentError(
            f"{url} is {int(length) / 1e6:.1f} MB; the limit for web pages is {_megabytes(max_bytes)}. "
            "Save the part you need and upload or paste it."
        )


def _read_body(url: str, response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    chunks, size = [], 0
    while chunk := response.read1(65_536):  # what has arrived, not 64 kB: the deadline is checked often
        size += len(chunk)
        if size > max_bytes:
            raise DocumentError(
                f"{url} is larger than {_megabytes(max_bytes)}, the limit for web pages. "
                "Save the part you need and upload or paste it."
            )
        if time.monotonic() > deadline:
            raise TimeoutError
        chunks.append(chunk)
    if time.monotonic() > deadline:  # the watchdog shut the socket: an end of the body, not the real one
        raise TimeoutError
    return b"".join(chunks)


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)


def _page_document(url: str, headers: http.client.HTTPMessage, body: bytes) -> Document:
    kind = headers.get_content_type()
    text = _decode_page(body, headers.get_content_charset(), sniff_meta=kind != "text/plain")
    if "\x00" in text:  # an image or archive served as text/html (UTF-16 pages decode without NULs)
        raise DocumentError(
            f"{clean_line(url)[:200]} is not a web page: it holds binary data. Check the address."
        )
    name = clean_line(url)
    if kind == "text/plain":
        return _document(_tidy(text), None, name, source=name)
    title, text = html_to_text(text)
    return _document(_tidy(text), title, name, source=name)


def _declared_charset(html: bytes) -> str | None:
    """The charset of <meta charset=...> or <meta http-equiv=... content="...; charset=...">, if any."""
    # Only the first 2 KB, where the declaration must be; the pattern's repeats are bounded.
    match = _META_CHARSET.search(html[:2048])
    return match.group(1).decode("ascii") if match else None


def _decode_page(body: bytes, charset: str | None, sniff_meta: bool) -> str:
    """The charset from the header, else a byte-order mark, else <meta charset> (HTML), else UTF-8."""
    for mark, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if not charset and body.startswith(mark):
            charset = codec
    if not charset and sniff_meta:
        charset = _declared_charset(body)
    if not charset:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:  # no charset and not UTF-8: the web's legacy default, as browsers read it
            return body.decode("windows-1252", errors="replace")
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


if __name__ == "__main__" and sys.argv[1:] == ["--pdf-worker"]:
    _pdf_worker_main()
