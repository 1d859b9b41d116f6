"""Document loading: every kind of file a user may upload, good and bad."""

from __future__ import annotations

import pytest

from cqa.documents import (
    MAX_CHARACTERS,
    MAX_FILE_BYTES,
    DocumentError,
    document_from_text,
    html_to_text,
    load_document_bytes,
    load_document_file,
)

PAGE = """<!DOCTYPE html>
<html>
<head>
  <title>Otters &amp; tools</title>
  <style>p { color: red; }</style>
  <script>alert("not text");</script>
</head>
<body>
  <nav><a href="/">Home</a></nav>
  <h1>Sea otters</h1>
  <p>Sea otters use
     stones as <b>tools</b>.</p>
  <p>They eat clams &lt;and&gt; crabs.<br>Really.</p>
  <ul><li>Dense fur</li><li>No blubber</li></ul>
  <noscript>Enable JavaScript</noscript>
</body>
</html>"""


def test_html_to_text_drops_scripts_and_styles_and_keeps_paragraphs():
    title, text = html_to_text(PAGE)
    assert title == "Otters & tools"
    assert text == (
        "Home\n\nSea otters\n\nSea otters use stones as tools.\n\nThey eat clams <and> crabs.\n\nReally."
        "\n\nDense fur\n\nNo blubber"
    )
    assert "alert" not in text and "color" not in text and "JavaScript" not in text


def test_html_title_falls_back_to_the_first_heading():
    title, text = html_to_text("<h1>Only <i>a</i> heading</h1><p>Body.</p>")
    assert title == "Only a heading"
    assert text == "Only a heading\n\nBody."


def test_html_upload():
    document = load_document_bytes(PAGE.encode(), "otters.html")
    assert document.title == "Otters & tools"
    assert document.text.startswith("Home\n\nSea otters")


def test_markdown_upload_keeps_prose_and_drops_syntax():
    markdown = (
        "---\nlayout: post\n---\n# How otters eat\n\nThey use [stones](https://example.com) as tools."
        "\n\n![An otter](otter.png)\n\n## Diet ##\nClams and crabs, *mostly*.\n"
    )
    document = load_document_bytes(markdown.encode(), "post.md")
    assert document.title == "How otters eat"
    assert document.text == (
        "How otters eat\n\nThey use stones as tools.\n\nAn otter\n\nDiet\nClams and crabs, *mostly*."
    )
    assert document.words == 15


def test_text_upload_title_is_the_first_line_and_line_ends_are_unified():
    document = load_document_bytes(b"\xef\xbb\xbfFirst line\r\n\r\n\r\n\r\nSecond   \r\nthird", "notes.txt")
    assert document.title == "First line"  # the UTF-8 byte-order mark is dropped
    assert document.text == "First line\n\nSecond\nthird"


def test_long_titles_are_shortened():
    document = document_from_text("word " * 100)
    assert len(document.title) == 80 and document.title.endswith("…")


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n"], ids=["empty", "blank"])
def test_empty_files_are_refused(data):
    with pytest.raises(DocumentError, match=r"notes\.txt"):
        load_document_bytes(data, "notes.txt")


def test_empty_after_html_conversion_is_refused():
    with pytest.raises(DocumentError, match="has no text"):
        load_document_bytes(b"<html><script>var a = 1;</script></html>", "blank.html")


def test_non_utf8_is_refused_with_the_fix():
    with pytest.raises(DocumentError, match=r"latin\.txt is not valid UTF-8 .*byte 3.*Save it with UTF-8"):
        load_document_bytes("Café au lait".encode("latin-1"), "latin.txt")


def test_binary_is_refused():
    with pytest.raises(DocumentError, match=r"photo\.md looks like a binary file"):
        load_document_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "photo.md")
    with pytest.raises(DocumentError, match="binary"):
        load_document_bytes("UTF-16 text".encode("utf-16"), "wide.txt")


def test_oversized_files_and_texts_are_refused():
    with pytest.raises(DocumentError, match=r"big\.txt is 1\.0 MB; the limit is 1 MB"):
        load_document_bytes(b"a" * (MAX_FILE_BYTES + 1), "big.txt")
    with pytest.raises(DocumentError, match=f"limit is {MAX_CHARACTERS:,}"):
        document_from_text("a " * MAX_CHARACTERS)


def test_unsupported_file_types_are_refused():
    with pytest.raises(DocumentError, match=r"report\.pdf: unsupported file type '\.pdf'"):
        load_document_bytes(b"%PDF-1.4", "report.pdf")
    with pytest.raises(DocumentError, match="no extension"):
        load_document_bytes(b"text", "README")


def test_pasted_text():
    document = document_from_text("  Otters\n\nThey float.  ")
    assert (document.title, document.text, document.words) == ("Otters", "Otters\n\nThey float.", 3)
    with pytest.raises(DocumentError, match="The pasted text has no text"):
        document_from_text(" \n ")


def test_load_document_file(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# Title\n\nBody text.", encoding="utf-8")
    assert load_document_file(path).title == "Title"
    with pytest.raises(DocumentError, match=r"Cannot read the document .*missing\.md"):
        load_document_file(tmp_path / "missing.md")
