"""Document loading: every kind of file a user may upload, good and bad."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.pdfs import blank_pdf, encrypted_pdf, text_pdf

from cqa import documents
from cqa.documents import (
    HTML_MAX_ELEMENTS,
    LIMITS_TEXT,
    MAX_CHARACTERS,
    MAX_FILE_BYTES,
    MAX_PDF_BYTES,
    MAX_PDF_PAGES,
    MAX_UPLOAD_BYTES,
    SUPPORTED_SUFFIXES,
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


ARTICLE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>How sea otters use tools | Ocean Blog</title><script>var tracking = 1;</script>
<style>body {}</style></head>
<body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
  <button>Accept all cookies</button></div>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li></ul></nav></header>
<main><article>
<h1>How sea otters use tools</h1>
<p>Sea otters are among the few marine mammals that use <b>stones as tools</b>. They float on their backs
   and crack open clams on a rock balanced on the chest.</p>
<p>Researchers found that otters reuse favourite stones for weeks, carrying them in a pouch of skin.</p>
<h2>Diet</h2>
<p>Their diet is mostly sea urchins, crabs and clams; an adult eats a quarter of its weight every day.</p>
</article>
<aside class="sidebar"><h3>Related posts</h3><ul><li><a href="/a">Whales sing</a></li></ul></aside>
</main>
<footer><p>Copyright 2024 Ocean Blog. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
<script>console.log("bye")</script>
</body></html>"""


def test_html_keeps_the_main_text_only():
    title, text = html_to_text(ARTICLE)
    assert title == "How sea otters use tools"
    assert text == (
        "How sea otters use tools\n\n"
        "Sea otters are among the few marine mammals that use stones as tools. They float on their backs "
        "and crack open clams on a rock balanced on the chest.\n\n"
        "Researchers found that otters reuse favourite stones for weeks, carrying them in a pouch of skin."
        "\n\n"
        "Diet\n\n"
        "Their diet is mostly sea urchins, crabs and clams; an adult eats a quarter of its weight every day."
    )
    for noise in (
        "cookies",
        "Home",
        "About us",
        "Related posts",
        "Whales",
        "Copyright",
        "Privacy",
        "tracking",
    ):
        assert noise not in text


def test_html_drops_scripts_styles_and_navigation_of_a_small_page():
    title, text = html_to_text(PAGE)
    assert title == "Sea otters"  # the first heading, else the <title>
    assert text == "Sea otters use stones as tools.\n\nThey eat clams <and> crabs.\n\nReally."
    assert "alert" not in text and "color" not in text and "JavaScript" not in text and "Home" not in text


def test_html_title_falls_back_to_the_page_title():
    title, text = html_to_text("<title>Otters &amp; tools</title><p>Body text.</p>")
    assert (title, text) == ("Otters & tools", "Body text.")


def test_html_too_large_to_analyse_keeps_its_visible_text():
    # Over HTML_MAX_ELEMENTS trafilatura would take too long: the page's visible text is kept instead.
    page = "<nav>Menu</nav>" + "<p>Word.</p>" * (HTML_MAX_ELEMENTS + 1) + "<script>var hidden;</script>"
    title, text = html_to_text(page)
    assert title is None
    assert text.startswith("Menu\n\nWord.\n\nWord.") and text.count("Word.") == HTML_MAX_ELEMENTS + 1
    assert "hidden" not in text


def test_html_upload():
    document = load_document_bytes(ARTICLE.encode(), "otters.html")
    assert document.title == "How sea otters use tools"
    assert document.source == "otters.html"
    assert document.text.startswith("How sea otters use tools\n\nSea otters are")


def test_xhtml_with_an_encoding_declaration_is_read():
    page = '<?xml version="1.0" encoding="utf-8"?><html><body><p>Café au lait.</p></body></html>'
    assert load_document_bytes(page.encode(), "page.htm").text == "Café au lait."


def test_markdown_upload_keeps_prose_and_drops_syntax():
    markdown = (
        "---\nlayout: post\ntitle: ignored\n---\n# How otters eat\n\n"
        "They use [stones](https://example.com) as tools &amp; \\*toys\\*."
        "\n\n![An *otter*](otter.png)\n\n## Diet ##\nClams and crabs, *mostly*.\n\n"
        "- urchins\n- <b>crabs</b>\n\n```python\neat(clams)\n```\n\n"
        "<div>\n<p>Seen <i>daily</i>.</p>\n</div>\n"
    )
    document = load_document_bytes(markdown.encode(), "post.md")
    assert document.title == "How otters eat"
    assert document.text == (
        "How otters eat\n\nThey use stones as tools & *toys*.\n\nAn otter\n\nDiet\n\nClams and crabs, mostly."
        "\n\nurchins\n\ncrabs\n\neat(clams)\n\nSeen daily."
    )
    assert document.words == 22


def test_markdown_out_of_time_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(documents, "MARKDOWN_SECONDS", 0.0)
    stopped = r"post\.md: reading its Markdown took over 0 s, so it was stopped .* save it as \.txt"
    with pytest.raises(DocumentError, match=stopped):
        load_document_bytes(b"[a](b) " * 10, "post.md")


def test_markdown_without_a_heading_takes_its_first_line_as_title():
    document = load_document_bytes(b"Otters *float*.\n\nThey sleep.", "notes.markdown")
    assert (document.title, document.text) == ("Otters float.", "Otters float.\n\nThey sleep.")


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


def test_html_upload_in_its_declared_charset():
    page = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252"></head>'
    data = (page + "<p>Café “au lait”.</p>").encode("cp1252")
    assert load_document_bytes(data, "saved.html").text == "Café “au lait”."
    with pytest.raises(DocumentError, match=r"wrong\.html is not valid UTF-8"):  # declared, but not true
        load_document_bytes(b'<meta charset="utf-8"><p>Caf\xe9</p>', "wrong.html")


def test_binary_is_refused():
    with pytest.raises(DocumentError, match=r"photo\.md looks like a binary file"):
        load_document_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "photo.md")


def test_oversized_files_and_texts_are_refused():
    with pytest.raises(DocumentError, match=r"big\.txt is 1\.0 MB; the limit is 1 MB"):
        load_document_bytes(b"a" * (MAX_FILE_BYTES + 1), "big.txt")
    with pytest.raises(DocumentError, match=f"limit is {MAX_CHARACTERS:,}"):
        document_from_text("a " * MAX_CHARACTERS)
    # The character limit applies to the text after extraction, whatever the file's size.
    markup = "<p>" + "a " * (MAX_CHARACTERS // 2) + "</p>"
    assert len(load_document_bytes(markup.encode(), "fits.html").text) < MAX_CHARACTERS
    with pytest.raises(
        DocumentError, match=r"long\.html has 200,001 characters of text; the limit is 200,000"
    ):
        load_document_bytes(("<p>" + "a" * (MAX_CHARACTERS + 1) + "</p>").encode(), "long.html")


def test_limits_are_stated_once_for_people():
    assert LIMITS_TEXT == (
        "Text, Markdown or HTML files and web pages up to 1 MB, PDF up to 10 MB and 300 pages; "
        "at most 200,000 characters of text."
    )
    assert (MAX_FILE_BYTES, MAX_PDF_BYTES, MAX_PDF_PAGES, MAX_CHARACTERS) == (10**6, 10**7, 300, 200_000)
    assert MAX_UPLOAD_BYTES == MAX_PDF_BYTES
    assert SUPPORTED_SUFFIXES == (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
    with pytest.raises(DocumentError) as refused:
        load_document_bytes(b"a" * (MAX_FILE_BYTES + 1), "big.md")
    assert LIMITS_TEXT in str(refused.value)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_unicode_files_with_a_byte_order_mark_are_decoded(codec):
    data = ("\ufeff" if codec.endswith("-be") else "") + "Café notes\n\nLine two."
    document = load_document_bytes(data.encode(codec), "wide.txt")
    assert (document.title, document.text) == ("Café notes", "Café notes\n\nLine two.")


def test_titles_and_file_names_carry_no_bidi_or_control_characters():
    # U+202E (right-to-left override) would reverse the rest of the header line; U+2066 opens an isolate.
    document = load_document_bytes("\u202eTitle\x1b[31m red\u2066 end\u200d.".encode(), "a\u202etxt.gpj.txt")
    assert document.title == "Title [31m red end\u200d."  # the zero-width joiner (emoji, scripts) stays
    assert document.source == "atxt.gpj.txt"
    with pytest.raises(DocumentError, match=r"^atxt\.gpj\.md is empty"):
        load_document_bytes(b" ", "a\u202etxt.gpj.md")
    assert document_from_text("x", title="Bad\u202b\n title\u2029").title == "Bad title"


def test_unsupported_file_types_are_refused():
    with pytest.raises(DocumentError, match=r"report\.docx: unsupported file type '\.docx'.* \.pdf file"):
        load_document_bytes(b"PK\x03\x04", "report.docx")
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


def test_pasted_text_has_no_source_and_no_pages():
    document = document_from_text("Otters float.")
    assert (document.source, document.page_starts, document.page_at(0)) == ("", (), None)


# --- PDF ---


def test_pdf_keeps_its_pages():
    data = text_pdf(["Otters float.\nThey hold hands.", "", "Page (three) text."], title="Otter report")
    document = load_document_bytes(data, "report.pdf")
    assert document.title == "Otter report"
    assert document.source == "report.pdf"
    assert document.text == "Otters float.\nThey hold hands.\n\nPage (three) text."
    assert document.page_starts == (0, 30, 32)  # page 2 has no text: it is the break before page 3
    assert document.page_at(0) == 1 and document.page_at(28) == 1
    assert document.page_at(document.text.index("three")) == 3
    assert document.page_at(len(document.text) + 5) == 3 and document.page_at(-1) is None


def test_pdf_title_defaults_to_its_first_line():
    assert load_document_bytes(text_pdf(["First line\nrest"]), "a.pdf").title == "First line"


def test_pdf_encrypted_with_a_password_is_refused():
    with pytest.raises(DocumentError, match=r"secret\.pdf is protected with a password.*unprotected copy"):
        load_document_bytes(encrypted_pdf(["Secret plans."], user_password="secret"), "secret.pdf")


def test_pdf_encrypted_with_an_owner_password_only_is_read():
    data = encrypted_pdf(["Open plans."], user_password="")
    assert load_document_bytes(data, "open.pdf").text == "Open plans."


def test_pdf_without_a_text_layer_is_refused():
    with pytest.raises(DocumentError, match=r"scan\.pdf has no text layer.*OCR"):
        load_document_bytes(blank_pdf(2), "scan.pdf")


def test_pdf_over_the_page_limit_is_refused():
    with pytest.raises(DocumentError, match=rf"long\.pdf has 301 pages; the limit is {MAX_PDF_PAGES}"):
        load_document_bytes(blank_pdf(MAX_PDF_PAGES + 1), "long.pdf")


def test_pdf_over_the_byte_limit_is_refused_unread():
    with pytest.raises(
        DocumentError, match=r"huge\.pdf is 10\.0 MB; the limit for PDF files is 10 MB and 300"
    ):
        load_document_bytes(b"%PDF-1.4\n" + b" " * MAX_PDF_BYTES, "huge.pdf")


def test_pdf_over_the_character_limit_is_refused():
    page = ("word " * 20 + "\n") * 40  # 3,999 characters a page once tidied, 4,001 with the page break
    with pytest.raises(DocumentError, match=r"more than 200,000 characters of text .*reached on page 50\)"):
        load_document_bytes(text_pdf([page] * 120), "thick.pdf")


@pytest.mark.parametrize(
    "data",
    [text_pdf(["Hello world."])[:150], b"%PDF-1.7\n" + b"[" * 100_000, b"%PDF-1.4\n1 0 obj << /Type"],
    ids=["truncated", "nested-arrays", "garbage"],
)
def test_damaged_pdf_is_refused(data):
    with pytest.raises(DocumentError, match=r"broken\.pdf is damaged or not a PDF that can be read \(.+\)\."):
        load_document_bytes(data, "broken.pdf")


def test_a_file_named_pdf_that_is_not_one_is_refused():
    with pytest.raises(DocumentError, match=r"notes\.pdf is not a PDF file"):
        load_document_bytes(b"just text", "notes.pdf")


def test_pdf_that_takes_too_long_is_stopped_and_leaves_no_process(monkeypatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(documents, "PDF_SECONDS", 0.01)  # shorter than the reader process takes to start
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(DocumentError, match=r"slow\.pdf took longer than 0\.01 s to read, so reading it was"):
        load_document_bytes(text_pdf(["Fine text."]), "slow.pdf")
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    assert after <= before  # the killed reader was also reaped: no zombie


def test_the_readme_states_the_limits_as_the_code_does():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert LIMITS_TEXT in " ".join(readme.split())
