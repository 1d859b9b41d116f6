"""Hostile documents load, or are refused, in bounded time: none can stall the server.

Each shape is about 1 MB (the upload limit) and is read in a child process, so that a regression to
quadratic time fails this test instead of freezing pytest. The bound is the issue's: 3 s per document,
generous against the ~20 s to hours that backtracking regexes and HTMLParser took on these shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cqa.documents import HTML_MAX_ELEMENTS, MAX_FILE_BYTES

SECONDS = 3.0
SIZE = MAX_FILE_BYTES - 1_000  # just under the limit, so that the parser, not the size check, decides
REPO = Path(__file__).resolve().parents[1]


def repeated(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit))


# (file name, text): Markdown, HTML and plain text shapes that made parsers slow.
SHAPES = {
    "md-open-brackets": ("a.md", repeated("[")),
    "md-open-links": ("a.md", repeated("[a](")),
    "md-open-images": ("a.md", repeated("![")),
    "md-nested-brackets": ("a.md", repeated("[", SIZE // 2) + repeated("]", SIZE // 2)),
    "md-emphasis": ("a.md", repeated("_a")),
    "md-backticks": ("a.md", repeated("`a")),
    "md-html-tags": ("a.md", repeated("<a")),
    "md-entities": ("a.md", repeated("&#")),
    "md-deep-quotes": ("a.md", repeated(">")),
    "md-deep-lists": ("a.md", repeated("- ")),
    "md-many-lines": ("a.md", repeated("a\n")),
    "md-headings": ("a.md", repeated("# h\n")),
    "md-html-blocks": ("a.md", repeated("<div>x</div>\n\n")),
    "md-one-line": ("a.md", repeated("word ")),
    "html-open-tags": ("a.html", repeated("<a")),
    "html-open-comments": ("a.html", repeated("<!--")),
    "html-deep-nesting": ("a.html", repeated("<div>")),
    "html-deep-nesting-with-text": ("a.html", repeated("<div>x")),
    "html-many-paragraphs": ("a.html", repeated("<p>w ")),
    # The largest tree trafilatura is given, each element full of text: its slowest case.
    "html-element-limit": ("a.html", repeated("<p>" + "word " * (SIZE // (HTML_MAX_ELEMENTS - 10) // 5))),
    "html-one-line": ("a.html", "<p>" + repeated("word ")),
    "html-attributes": ("a.html", "<p " + repeated('a="b" ') + ">"),
    "txt-one-line": ("a.txt", repeated("word ")),
    "txt-line-ends": ("a.txt", "a" + repeated("\r\n\n")),
}

CHILD = """
import json, sys, time
from cqa.documents import DocumentError, html_to_text, load_document_bytes
html_to_text("<p>warm up: imports</p>")
name, text = json.load(sys.stdin)
start = time.perf_counter()
try:
    document = load_document_bytes(text.encode(), name)
    outcome = f"loaded: {document.words} words"
except DocumentError as error:
    outcome = f"refused: {error}"
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome}))
"""


@pytest.mark.parametrize("shape", SHAPES)
def test_hostile_document_is_read_or_refused_in_bounded_time(shape):
    name, text = SHAPES[shape]
    assert len(text.encode()) <= MAX_FILE_BYTES
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps([name, text]),
            capture_output=True,
            text=True,
            timeout=60 + SECONDS,  # imports and building the input, then the bound being tested
            cwd=REPO,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{shape}: not read within a minute")
    result = json.loads(done.stdout)
    assert result["seconds"] < SECONDS, f"{shape}: {result['seconds']:.1f} s, {result['outcome'][:200]}"
    assert result["outcome"].startswith(("loaded", "refused"))
