"""The chat page in a real browser: Playwright (sync API) driving Debian's Chromium, never a downloaded one.

Skips when /usr/bin/chromium is missing, unless CQA_REQUIRE_BROWSER=1 (CI), where that is a failure.
Leaves a screenshot at artifacts/chat.png; copy a good one to docs/screenshot.png for the README.
CQA_BROWSER_MODEL=DIR runs the page on another ONNX export (e.g. the real model, for the screenshot).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fixtures.servers import free_port, serving, web_page
from fixtures.slow_model import SlowGenerator

from app import DEFAULT_DOCUMENT, build_app
from cqa.documents import load_document_file
from cqa.generator import Seq2SeqGenerator

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium, or bash .ci/install-chromium)"
        if os.environ.get("CQA_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; CQA_REQUIRE_BROWSER=1 makes that a failure")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_url(tiny_dir) -> str:
    model = os.environ.get("CQA_BROWSER_MODEL") or tiny_dir / "onnx"
    generator = Seq2SeqGenerator.load(model, threads=1)
    document = load_document_file(DEFAULT_DOCUMENT)
    demo = build_app(generator, document, max_input_tokens=2048, max_new_tokens=12)  # short, for speed
    with serving(demo, 16) as url:
        yield url


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.dialogs = []  # every alert/confirm/prompt the page opens
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(app_url)
    page.locator("#question textarea").wait_for()
    yield page
    page.close()


def ask(page, question: str, n_answers_before: int) -> str:
    """Type ``question``, press Enter, and return the finished answer's text (which ends with its stats)."""
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")
    answer = page.locator('#chatbot [data-testid="bot"]').nth(n_answers_before)
    answer.filter(has_text=re.compile(r"tokens in · \d+ out")).wait_for(timeout=ANSWER_TIMEOUT_MS)
    return answer.inner_text()


def test_two_turns_and_the_model_input(page):
    header = page.locator("#header").inner_text()
    assert "How This Chatbot Works" in header and "words" in header

    first = ask(page, "What is this document about?", 0)
    assert re.search(r"\d+\.\d s · [\d,]+ tokens in · \d+ out", first)
    ask(page, "Which model does the chatbot use?", 1)
    users = page.locator('#chatbot [data-testid="user"]')
    assert users.count() == 2
    assert users.nth(1).inner_text() == "Which model does the chatbot use?"
    assert page.locator("#question textarea").input_value() == ""

    page.get_by_text("What the model sees").click()
    dialogue = page.get_by_label("The model input after the document").input_value()
    assert dialogue.startswith(" || <Q1> What is this document about? <A1> ")
    assert dialogue.endswith("<Q> Which model does the chatbot use? <A> ")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)


def test_markup_in_a_question_is_shown_as_text_and_never_runs(page):
    question = "Is <img src=x onerror=alert(1)> shown as <b>text</b>?"
    ask(page, question, 0)
    shown = page.locator('#chatbot [data-testid="user"]').first
    assert shown.inner_text() == question
    assert page.locator("#chatbot img[src='x']").count() == 0
    assert shown.locator("b").count() == 0
    page.wait_for_timeout(500)  # give a stray onerror handler time to fire
    assert page.dialogs == []


def test_a_pasted_title_with_markup_and_quotes_is_shown_as_typed(page):
    title = "Tom's <b>notes</b> & #1 *draft* [link](x)"
    page.get_by_text("Change the document").click()
    page.get_by_label("Or paste text").fill(title + "\n\nSome text about the notes to ask about.")
    page.get_by_text("Use the pasted text").click()
    status = page.get_by_text("Now answering questions about")
    status.wait_for()
    assert title in status.inner_text()
    assert title in page.locator("#header").inner_text()
    assert page.locator("#header bdi b, #header bdi em, #header a, #document-status a").count() == 0


def test_a_title_with_a_link_and_bidi_controls_is_shown_literally(page):
    title = "Notes [l](http://x) \u202egnp.exe"
    page.get_by_text("Change the document").click()
    page.get_by_label("Or paste text").fill(title + "\n\nSome text about the notes.")
    page.get_by_text("Use the pasted text").click()
    page.get_by_text("Now answering questions about").wait_for()
    header = page.locator("#header").inner_text()
    assert "Notes [l](http://x) gnp.exe" in header  # the right-to-left override is dropped
    assert "\u202e" not in header
    assert page.locator("#header a, #document-status a").count() == 0


def test_clear_empties_the_conversation(page):
    ask(page, "What is this document about?", 0)
    page.locator("#clear").click()
    page.get_by_text("The conversation was cleared.").wait_for()
    assert page.locator('#chatbot [data-testid="bot"]').count() == 0


def test_a_full_queue_tells_the_user_to_try_again(browser, tiny_dir):
    generator = Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)
    demo = build_app(generator, load_document_file(DEFAULT_DOCUMENT), max_input_tokens=256)
    demo.queue(max_size=0)  # every request finds the queue full
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        box = page.locator("#question textarea")
        box.fill("Is anyone there?")
        box.press("Enter")
        page.get_by_text("This application is currently busy. Please try again.").wait_for()
        assert box.input_value() == "Is anyone there?"  # nothing lost: send it again later
    finally:
        page.close()
        demo.close()


# --- While an answer is written: nothing typed is lost ---


@pytest.fixture(scope="module")
def slow_url(tiny_dir) -> str:
    generator = SlowGenerator.load(tiny_dir / "onnx", threads=1)
    generator.delay = 0.15
    demo = build_app(
        generator, load_document_file(DEFAULT_DOCUMENT), max_input_tokens=1024, max_new_tokens=30
    )
    with serving(demo, 16) as url:
        yield url


@pytest.fixture
def slow_page(browser, slow_url):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(slow_url)
    page.locator("#question textarea").wait_for()
    yield page
    page.close()


def streaming(page) -> None:
    """Wait until the answer being written shows on the page."""
    page.locator('#chatbot [data-testid="bot"]').last.filter(has_text="…").wait_for(timeout=ANSWER_TIMEOUT_MS)


def answered(page, n: int) -> None:
    page.locator('#chatbot [data-testid="bot"]').nth(n - 1).filter(
        has_text=re.compile(r"tokens in · \d+ out")
    ).wait_for(timeout=ANSWER_TIMEOUT_MS)


def test_typing_while_an_answer_streams_is_kept(slow_page):
    box = slow_page.locator("#question textarea")
    box.fill("What is this document about?")
    box.press("Enter")
    streaming(slow_page)
    assert box.input_value() == ""  # taken: cleared once
    box.press_sequentially("my next question", delay=20)
    answered(slow_page, 1)
    slow_page.wait_for_timeout(300)
    assert box.input_value() == "my next question"


def test_a_question_sent_while_answering_stays_in_the_box_then_is_answered(slow_page):
    box = slow_page.locator("#question textarea")
    box.fill("What is this document about?")
    box.press("Enter")
    streaming(slow_page)
    box.fill("Which model does it use?")
    box.press("Enter")
    slow_page.locator("#notice").filter(has_text="still being answered").wait_for()
    assert box.input_value() == "Which model does it use?"  # not dropped
    answered(slow_page, 1)
    assert "still being answered" in slow_page.locator("#notice").inner_text()  # the notice stays too
    box.press("Enter")
    answered(slow_page, 2)
    users = slow_page.locator('#chatbot [data-testid="user"]')
    assert users.count() == 2 and users.nth(1).inner_text() == "Which model does it use?"


def test_clear_while_answering_leaves_an_empty_conversation(slow_page):
    box = slow_page.locator("#question textarea")
    box.fill("What is this document about?")
    box.press("Enter")
    streaming(slow_page)
    slow_page.locator("#clear").click()
    # "The conversation was cleared.", then the answer being written says it stopped and was not kept.
    slow_page.locator("#notice").filter(has_text="was not kept").wait_for()
    slow_page.wait_for_timeout(1000)
    assert slow_page.locator('#chatbot [data-testid="bot"]').count() == 0
    box.fill("Which model does it use?")
    box.press("Enter")
    answered(slow_page, 1)
    slow_page.get_by_text("What the model sees").click()
    dialogue = slow_page.get_by_label("The model input after the document").input_value()
    assert dialogue == " || <Q> Which model does it use? <A> "  # the cleared turn is gone


def test_each_answer_says_where_it_comes_from_and_the_document_view_marks_it(page):
    answer = ask(page, "What is this document about?", 0)
    evidence = page.locator('#chatbot [data-testid="bot"]').first.locator("blockquote.evidence mark")
    if evidence.count():  # the answer is a quote of the document: it is marked there and in the view
        marked = evidence.first.inner_text()
        assert marked and marked in answer
        page.get_by_text("Document (the last answer highlighted)").click()
        mark = page.locator("#document-view mark#evidence-mark")
        mark.wait_for()
        assert mark.inner_text() == marked
        assert mark.is_visible()
    else:  # the tiny random model's words are rarely a quote: then the page says so plainly
        assert "Not found in the document" in answer or "found no answer" in answer
    page.get_by_text("Document (the last answer highlighted)").click()
    view = page.locator("#document-view").inner_text()
    assert view.startswith("How This Chatbot Works\n")  # the document as the model reads it, literally


# --- Real documents: a PDF, a local web page, a 15k-token document ---


@pytest.fixture(scope="module")
def local_page_url():
    """An article page on 127.0.0.1, with a menu and a footer around it."""
    body = (
        "<html><head><title>Kelp news</title></head><body><nav><a href='/'>Home</a> | Subscribe now</nav>"
        "<article><h1>Kelp forests grow fast</h1>"
        + "".join(
            f"<p>Part {i}: giant kelp can grow half a metre in a single day in cold water.</p>"
            for i in range(5)
        )
        + "</article><footer>Copyright Kelp News</footer></body></html>"
    ).encode()
    with web_page(body) as url:
        yield url


@pytest.fixture(scope="module")
def local_app_url(tiny_dir) -> str:
    """The app as run on one's own machine: --allow-local-urls."""
    generator = Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)
    document = load_document_file(DEFAULT_DOCUMENT)
    demo = build_app(generator, document, max_input_tokens=2048, max_new_tokens=8, allow_local_urls=True)
    with serving(demo, 16) as url:
        yield url


@pytest.fixture
def local_page(browser, local_app_url):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(local_app_url)
    page.locator("#question textarea").wait_for()
    page.get_by_text("Change the document").click()
    yield page
    page.close()


def test_a_pdf_upload_is_read_page_by_page(local_page, tmp_path):
    from fixtures.pdfs import text_pdf

    pdf = tmp_path / "field notes.pdf"
    pdf.write_bytes(
        text_pdf(["Otters float on their backs.", "Beavers build dams of sticks."], "Field notes")
    )
    local_page.locator("#upload input[type=file]").set_input_files(str(pdf))
    local_page.get_by_text("Now answering questions about").wait_for(timeout=30_000)
    ask(local_page, "What do beavers build?", 0)
    local_page.get_by_text("Document (the last answer highlighted)").click()
    view = local_page.locator("#document-view").inner_text()
    assert "Otters float on their backs." in view and "Beavers build dams of sticks." in view


def test_a_web_page_by_its_address_keeps_the_article(local_page, local_page_url):
    local_page.locator("#url textarea, #url input").first.fill(local_page_url)
    local_page.get_by_text("Fetch the page").click()
    local_page.get_by_text("Now answering questions about").wait_for(timeout=30_000)
    assert "Kelp forests grow fast" in local_page.locator("#header").inner_text()
    local_page.get_by_text("Document (the last answer highlighted)").click()
    view = local_page.locator("#document-view").inner_text()
    assert "giant kelp can grow half a metre" in view
    assert "Subscribe now" not in view and "Copyright" not in view


def test_a_15k_token_document_keeps_the_passages_related_to_the_question(local_page):
    paragraphs = [
        f"Section {i}. The harbour log for day {i} lists boats, tides and weather." for i in range(1100)
    ]
    paragraphs[900] = "Section 900. The lighthouse keeper was named Ingrid Solberg."
    local_page.get_by_label("Or paste text").fill("Harbour log\n\n" + "\n\n".join(paragraphs))
    local_page.get_by_text("Use the pasted text").click()
    local_page.get_by_text("Now answering questions about").wait_for(timeout=30_000)
    header = local_page.locator("#header").inner_text()
    tokens = int(re.search(r"([\d,]+) tokens\)", header).group(1).replace(",", ""))
    assert tokens > 15_000
    ask(local_page, "Who was the lighthouse keeper?", 0)
    notice = local_page.locator("#notice").inner_text()
    assert "passages most related to your question" in notice
    local_page.get_by_text("What the model sees").click()
    kept = local_page.get_by_label("The parts of the document the model sees").input_value()
    assert "The lighthouse keeper was named Ingrid Solberg." in kept


@pytest.fixture(scope="module")
def head_cut_url(tiny_dir) -> str:
    """An app whose model sees only the first 256 tokens of a document (the head cut), and always writes
    a full answer: text appended past the cut cannot change the model's answer."""
    generator = SlowGenerator.load(tiny_dir / "onnx", threads=1)
    generator.delay = 0
    document = load_document_file(DEFAULT_DOCUMENT)
    demo = build_app(generator, document, max_input_tokens=256, max_new_tokens=6, context_strategy="head")
    with serving(demo, 16) as url:
        yield url


def paste(page, text: str) -> None:
    page.get_by_label("Or paste text").fill(text)
    page.get_by_text("Use the pasted text").click()
    page.get_by_text("Now answering questions about").wait_for(timeout=30_000)
    page.locator('#chatbot [data-testid="bot"]').first.wait_for(state="detached")


def test_an_answer_found_in_the_document_is_quoted_marked_and_shown_in_place(browser, head_cut_url):
    """The tiny model's answer is random words: append them to the document past the model's cut (the
    answer stays the same), and the evidence is that sentence, marked, with the document view on it."""
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    try:
        page.goto(head_cut_url)
        page.get_by_text("Change the document").click()
        start = "\n\n".join(f"Paragraph {i} is about the harbour and its boats." for i in range(200))
        paste(page, "Harbour notes\n\n" + start)
        question = "What is the harbour about?"
        first = ask(page, question, 0).split("\n")[0]
        assert "Not found in the document" in page.locator('#chatbot [data-testid="bot"]').first.inner_text()
        answer = page.locator('#chatbot [data-testid="bot"]').first.inner_text().split("Not found")[0].strip()
        assert answer and answer in first

        paste(page, "Harbour notes\n\n" + start + f"\n\nThe last line says {answer} and nothing more.")
        shown = ask(page, question, 0)
        mark = page.locator('#chatbot [data-testid="bot"] blockquote.evidence mark')
        assert mark.inner_text() == answer
        assert f"The last line says {answer} and nothing more." in shown  # the sentence, quoted

        page.get_by_text("Document (the last answer highlighted)").click()
        in_view = page.locator("#document-view mark#evidence-mark")
        in_view.wait_for()
        assert in_view.inner_text() == answer
        page.wait_for_timeout(300)
        box = page.locator("#document-view .document").bounding_box()
        marked = in_view.bounding_box()
        assert box["y"] <= marked["y"] <= box["y"] + box["height"]  # scrolled into view, at the very end
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "evidence.png"), full_page=True)
    finally:
        page.close()
