"""The chat app, launched for real in-process with the tiny ONNX model, driven through gradio_client.

Each gradio_client.Client is one session: its conversation lives in the server's gr.State.
"""

from __future__ import annotations

import contextlib
import copy
import html
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.servers import free_port, serving, web_page
from fixtures.slow_model import SlowGenerator
from gradio_client import Client, handle_file

from app import MAX_QUESTION_TOKENS, PRECISIONS, build_app, parse_args
from cqa.documents import Document
from cqa.format import build_model_input
from cqa.generator import Seq2SeqGenerator

REPO = Path(__file__).resolve().parents[1]
MAX_INPUT_TOKENS = 1024
DOCUMENT = Document(
    title="Otters",
    text=(
        "Sea otters live in the northern Pacific Ocean. They eat sea urchins, crabs and clams, and they "
        "use stones as tools to open shells. A sea otter has the densest fur of any animal, which keeps "
        "it warm in cold water, because it has no layer of blubber."
    ),
)


@pytest.fixture(scope="module")
def generator(tiny_dir) -> Seq2SeqGenerator:
    return Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)


@pytest.fixture(scope="module")
def server(generator) -> str:
    demo = build_app(generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=8)
    with serving(demo, 32) as url:
        yield url


def new_client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


CHAT_OUTPUTS = (
    "header",
    "chatbot",
    "question_box",
    "notice",
    "input_info",
    "dialogue",
    "kept",
    "details",
    "document_view",
    "download",
)
DOCUMENT_OUTPUTS = ("status", *CHAT_OUTPUTS)


def skipped(output) -> bool:
    """Whether an update left this output as it was (gradio_client's form of gr.skip())."""
    return isinstance(output, dict) and output.get("__type__") == "update"


def named(outputs, names=CHAT_OUTPUTS) -> dict:
    assert len(outputs) == len(names)
    return dict(zip(names, outputs, strict=True))


def chat(client: Client, question: str) -> dict:
    """One turn; returns the chat endpoint's outputs by name."""
    return named(client.predict(question, api_name="/chat"))


def use(client: Client, *args, api_name: str) -> dict:
    """A document endpoint (/use_text, /use_file, /use_url, /use_default); its outputs by name."""
    return named(client.predict(*args, api_name=api_name), DOCUMENT_OUTPUTS)


def text_of(message: dict) -> str:
    """A Chatbot message's text (gradio_client returns content as a list of blocks)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content)


def test_four_turns_model_input_holds_the_last_two(server):
    client = new_client(server)
    questions = ["Where do sea otters live?", "What do they eat?", "How do they open shells?", "Why?"]
    answers: list[str] = []
    for question in questions:
        result = chat(client, question)
        details = result["details"]
        assert details["done"] and details["question"] == question
        answers.append(details["text"])

    history = list(zip(questions[1:3], answers[1:3], strict=True))
    expected = build_model_input(DOCUMENT.text, history, questions[3])
    assert details["model_input"] == expected
    assert f"<Q2> {questions[1]} <A2>" in expected and f"<Q1> {questions[2]} <A1>" in expected
    assert questions[0] not in details["model_input"]
    assert result["dialogue"] == expected[len(DOCUMENT.text) :]
    assert len(result["chatbot"]) == 8  # the whole conversation stays on screen
    assert skipped(result["question_box"])  # the box was cleared once, when the question was taken
    assert skipped(result["notice"])  # nothing to say: no notice


def test_second_turn_uses_the_first(server):
    # The original app skipped the single previous pair on the second turn; this one does not.
    client = new_client(server)
    first = chat(client, "Where do sea otters live?")["details"]
    second = chat(client, "What do they eat?")["details"]
    assert second["model_input"].endswith(
        f" || <Q1> Where do sea otters live? <A1> {first['text']} <Q> What do they eat? <A> "
    )


def test_sessions_are_isolated(server):
    alice, bob = new_client(server), new_client(server)
    chat(alice, "alpha question")
    bob_input = chat(bob, "beta question")["details"]["model_input"]
    assert "alpha" not in bob_input and "<Q1>" not in bob_input
    alice_input = chat(alice, "gamma question")["details"]["model_input"]
    assert "<Q1> alpha question <A1>" in alice_input and "beta" not in alice_input


@pytest.mark.slow
def test_eight_concurrent_clients_keep_their_own_histories(server):
    def converse(user: int) -> list[str]:
        client = new_client(server)
        return [chat(client, f"user {user} turn {turn}")["details"]["model_input"] for turn in range(3)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        inputs = list(pool.map(converse, range(8)))

    for user, (first, second, third) in enumerate(inputs):
        assert first.endswith(f"|| <Q> user {user} turn 0 <A> ")
        assert f"<Q1> user {user} turn 0 <A1>" in second
        assert f"<Q2> user {user} turn 0 <A2>" in third and f"<Q1> user {user} turn 1 <A1>" in third
        others = [f"user {other} " for other in range(8) if other != user]
        assert not any(other in text for other in others for text in (first, second, third))


def test_empty_and_huge_questions_get_a_message_and_lose_nothing(server):
    client = new_client(server)
    first = chat(client, "Where do sea otters live?")["details"]

    empty = chat(client, "   ")
    assert "Type a question" in empty["notice"]

    huge = chat(client, "otter " * 1500)
    assert f"limit is {MAX_QUESTION_TOKENS:,}" in huge["notice"]

    after = chat(client, "What do they eat?")
    assert skipped(after["notice"])  # (its first update, when the question was taken, cleared the notice)
    assert after["details"]["model_input"].endswith(
        f"<Q1> Where do sea otters live? <A1> {first['text']} <Q> What do they eat? <A> "
    )
    assert len(after["chatbot"]) == 4  # neither bad question reached the conversation


def test_oversized_document_keeps_the_passages_related_to_the_question(server, generator):
    client = new_client(server)
    paragraphs = [f"Paragraph {i} says otters are mammals of kind {i}." for i in range(600)]
    paragraphs[550] = "The zebra herd crossed the Mara river at dawn."
    long_text = "\n\n".join(paragraphs)
    use(client, long_text, api_name="/use_text")
    result = chat(client, "Which river did the zebra herd cross?")
    assert "passages most related to your question" in result["input_info"]  # (and on the page's notice)
    details = result["details"]
    assert details["truncated"] and details["done"] and details["context_strategy"] == "relevant"
    assert "The zebra herd crossed the Mara river at dawn." in details["model_input"]  # the end, kept
    assert details["model_input"].endswith(" || <Q> Which river did the zebra herd cross? <A> ")
    assert generator.count_tokens(details["model_input"]) <= MAX_INPUT_TOKENS
    # The kept parts are shown, and they are ranges of the document itself.
    ranges = details["kept_ranges"]
    assert ranges and all(long_text[a:b] in result["kept"] for a, b in ranges)


def test_clear_resets_the_conversation(server):
    client = new_client(server)
    chat(client, "Where do sea otters live?")
    chatbot = named(client.predict(api_name="/clear"))["chatbot"]
    assert chatbot == []
    model_input = chat(client, "What do they eat?")["details"]["model_input"]
    assert model_input == build_model_input(DOCUMENT.text, [], "What do they eat?")


def test_retry_replaces_the_last_answer(server):
    client = new_client(server)
    first = chat(client, "Where do sea otters live?")["details"]
    chat(client, "What do they eat?")
    retried = named(client.predict(api_name="/retry"))
    chatbot, details = retried["chatbot"], retried["details"]
    assert details["question"] == "What do they eat?"
    assert details["model_input"] == build_model_input(
        DOCUMENT.text, [("Where do sea otters live?", first["text"])], "What do they eat?"
    )
    assert len(chatbot) == 4  # replaced, not appended
    third = chat(client, "And then?")["details"]["model_input"]
    assert third.count("What do they eat?") == 1


def test_switching_document_resets_the_conversation(server, tmp_path):
    client = new_client(server)
    chat(client, "Where do sea otters live?")

    page = tmp_path / "zebras.html"
    page.write_text(
        "<html><head><title>Zebras</title><style>p {color: red}</style></head>"
        "<body><h1>Zebras</h1><p>Zebras have black and white stripes.</p><script>var x = 1;</script></body>"
        "</html>",
        encoding="utf-8",
    )
    switched = use(client, handle_file(str(page)), api_name="/use_file")
    assert "Zebras" in switched["header"] and "Zebras" in switched["status"]
    assert switched["chatbot"] == [] and "starts over" in switched["notice"]
    model_input = chat(client, "What do zebras have?")["details"]["model_input"]
    assert "Zebras have black and white stripes." in model_input
    assert "var x" not in model_input and "color: red" not in model_input  # scripts and styles are not text
    assert model_input.endswith(" || <Q> What do zebras have? <A> ")

    # A bad upload is refused with a message; the document and the conversation stay as they were.
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"GIF89a\x00\x01\x00\x00")
    refused = use(client, handle_file(str(binary)), api_name="/use_file")
    assert "binary" in refused["status"] and "image.txt" in refused["status"]
    kept = chat(client, "What colour?")["details"]["model_input"]
    assert "Zebras have black" in kept and "<Q1> What do zebras have? <A1>" in kept

    assert "no text" in use(client, "   ", api_name="/use_text")["status"]

    assert "Otters" in use(client, api_name="/use_default")["header"]
    back = chat(client, "Where do sea otters live?")["details"]["model_input"]
    assert back == build_model_input(DOCUMENT.text, [], "Where do sea otters live?")


def test_markup_is_escaped_in_the_chatbot(server):
    client = new_client(server)
    question = "<img src=x onerror=alert(1)> **bold**?"
    result = chat(client, question)
    shown = text_of(result["chatbot"][0])
    assert shown == "&lt;img src=x onerror=alert(1)&gt; **bold**?"
    assert result["details"]["question"] == question  # the model gets the text itself


def test_a_failed_generation_keeps_the_question_and_the_conversation(generator):
    """ONNX Runtime failing mid-answer (injected here: a real export does not fail on demand) gives a
    message, puts the question back in its box, and leaves the conversation as it was."""
    broken = copy.copy(generator)
    calls = []

    def failing_stream(text: str, **options):
        calls.append(text)
        if len(calls) > 1:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected failure")
        yield from generator.stream(text, **options)

    broken.stream = failing_stream
    demo = build_app(broken, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=4)
    with serving(demo) as url:
        client = new_client(url)
        first = chat(client, "Where do sea otters live?")
        failed = chat(client, "What do they eat?")
        assert "The model failed on this question" in failed["notice"]
        assert "injected failure" in failed["notice"]
        assert failed["question_box"] == "What do they eat?"  # nothing typed is lost
        assert failed["chatbot"] == first["chatbot"]  # the first turn is still there, nothing added


@contextlib.contextmanager
def app_command(*args: str, env: dict[str, str], log_path: Path):
    """`python app.py ARGS` as a Space runs it, on a free port; yields (process, url) once it serves."""
    port = free_port()
    command = [sys.executable, "app.py", *args, "--port", str(port)]
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start in 90 s"
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def page_text(url: str) -> str:
    """The text of every component on the served page (Gradio's /config, as the browser gets it), with
    the page's Markdown escapes (backslashes, HTML entities) undone."""
    with urllib.request.urlopen(url + "config", timeout=10) as response:
        config = json.load(response)
    text = "\n".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    return html.unescape(text.replace("\\", ""))


@pytest.mark.slow
def test_missing_model_folder_is_explained_on_the_page_and_in_the_log(tmp_path):
    log_path = tmp_path / "app.log"
    env = {"MODEL_ID": "someone/other-model"}
    with app_command("--model", "/nonexistent/model-dir", env=env, log_path=log_path) as (_, url):
        page = page_text(url)
    output = log_path.read_text()
    for text in (page, output):
        assert "'/nonexistent/model-dir': no such folder" in text  # the command line wins over MODEL_ID
        assert "someone/other-model" not in text
        assert "--model" in text  # the way out
    assert "The model could not be loaded." in page
    assert "Traceback" not in output


@pytest.mark.slow
def test_unreachable_hub_model_is_explained_on_the_page_and_in_the_log(tmp_path):
    log_path = tmp_path / "app.log"
    env = {"MODEL_ID": "someone/missing-model-onnx", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    with app_command(env=env, log_path=log_path) as (_, url):
        page = page_text(url)
    output = log_path.read_text()
    for text in (page, output):
        assert "someone/missing-model-onnx" in text
        assert "--model" in text  # says how to use a local folder instead
    assert "The model could not be loaded." in page
    assert "Traceback" not in output


@pytest.mark.slow
def test_app_command_serves_a_conversation_without_torch(quantized_dir, tmp_path):
    """`python app.py` as a Space runs it: env settings, warm-up, one chat turn, and torch never loaded.
    The export has int8 files too, which the default precision (auto) serves."""
    context = tmp_path / "otters.md"
    context.write_text("# Otters\n\n" + "Sea otters use stones as tools. " * 40, encoding="utf-8")
    log_path = tmp_path / "app.log"
    env = {"CONTEXT_FILE": str(context), "MAX_INPUT_TOKENS": "300", "THREADS": "1"}
    with app_command("--model", str(quantized_dir), env=env, log_path=log_path) as (process, url):
        details = chat(new_client(url), "What do otters use?")["details"]
        assert details["done"]
        assert details["truncated"]  # MAX_INPUT_TOKENS=300 from the environment
        assert details["model_input"].startswith("Sea otters use stones as tools.")  # its kept passages
        assert details["model_input"].endswith(" || <Q> What do otters use? <A> ")
        # Importing torch would map its shared libraries into the server process.
        assert "/torch/" not in Path(f"/proc/{process.pid}/maps").read_text()
    output = log_path.read_text()
    assert "(int8) ready on 1 thread(s)" in output and "answered in" in output


def test_precision_option_and_environment(monkeypatch):
    monkeypatch.delenv("PRECISION", raising=False)
    assert PRECISIONS[parse_args([]).precision] is None  # auto: int8 when the export has it
    assert PRECISIONS[parse_args(["--quantized"]).precision] is True
    monkeypatch.setenv("PRECISION", "fp32")
    assert PRECISIONS[parse_args([]).precision] is False
    assert PRECISIONS[parse_args(["--precision", "int8"]).precision] is True  # the command line wins


# --- Answers that take a while: what the visitor does meanwhile is never lost ---


SLOW_TOKENS = 30  # 3 s per answer


@pytest.fixture(scope="module")
def slow(tiny_dir):
    generator = SlowGenerator.load(tiny_dir / "onnx", threads=1)
    demo = build_app(
        generator,
        DOCUMENT,
        max_input_tokens=MAX_INPUT_TOKENS,
        max_new_tokens=SLOW_TOKENS,
        not_listening_seconds=1.5,
    )
    with serving(demo, queue_size=32) as url:
        yield generator, url, demo


def wait_until_generating(generator: SlowGenerator, calls_before: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(getattr(generator, "progress", [])) <= calls_before or generator.progress[-1] < 2:
        assert time.monotonic() < deadline, "the answer did not start"
        time.sleep(0.05)


def calls(generator) -> int:
    return len(getattr(generator, "progress", []))


@pytest.mark.slow
def test_a_question_sent_while_one_is_answered_is_kept_with_a_notice(slow):
    generator, url, _ = slow
    client = new_client(url)
    before = calls(generator)
    first = client.submit("Where do sea otters live?", api_name="/chat")
    wait_until_generating(generator, before)
    again = chat(client, "Where do sea otters live?")  # Enter pressed twice
    assert again["notice"] == "That question is being answered."
    second = chat(client, "What do they eat?")
    assert "still being answered" in second["notice"] and "stays in the box" in second["notice"]
    done = named(first.result(timeout=60))
    assert done["details"]["done"] and done["details"]["stored"]
    assert skipped(done["notice"])  # the finished answer leaves that notice on the page
    assert len(done["chatbot"]) == 2  # the second question did not enter the conversation
    assert calls(generator) == before + 1  # and it never reached the model


@pytest.mark.slow
def test_clear_while_an_answer_is_written_wins_over_the_late_answer(slow):
    generator, url, _ = slow
    client = new_client(url)
    chat(client, "Where do sea otters live?")
    before = calls(generator)
    running = client.submit("What do they eat?", api_name="/chat")
    wait_until_generating(generator, before)
    cleared = named(client.predict(api_name="/clear"))  # gradio_client sends no cancel
    assert cleared["chatbot"] == []
    late = named(running.result(timeout=60))
    assert "was not kept" in late["notice"] and late["chatbot"] == []
    assert late["details"]["stored"] is False
    model_input = chat(client, "How do they open shells?")["details"]["model_input"]
    assert model_input == build_model_input(DOCUMENT.text, [], "How do they open shells?")


@pytest.mark.slow
def test_a_new_document_while_an_answer_is_written_wins(slow):
    generator, url, _ = slow
    client = new_client(url)
    before = calls(generator)
    running = client.submit("Where do sea otters live?", api_name="/chat")
    wait_until_generating(generator, before)
    use(client, "Zebras\n\nZebras have stripes.", api_name="/use_text")
    late = named(running.result(timeout=60))
    assert "was not kept" in late["notice"]
    model_input = chat(client, "What do zebras have?")["details"]["model_input"]
    assert model_input == build_model_input("Zebras\n\nZebras have stripes.", [], "What do zebras have?")


@pytest.mark.slow
def test_two_clients_are_answered_in_order_and_told_their_place(slow):
    generator, url, _ = slow
    alice, bob = new_client(url), new_client(url)
    before = calls(generator)
    first = alice.submit("alpha question", api_name="/chat")
    wait_until_generating(generator, before)
    second = bob.submit("beta question", api_name="/chat")
    alice_done = named(first.result(timeout=60))
    bob_done = named(second.result(timeout=60))
    assert alice_done["details"]["done"] and bob_done["details"]["done"]
    notices = [named(outputs)["notice"] for outputs in second.outputs()]
    assert any("1 question ahead of yours" in (text or "") for text in notices)
    assert "alpha" not in bob_done["details"]["model_input"]


@pytest.mark.slow
def test_a_client_that_disconnects_stops_its_answer(slow):
    """A client process killed mid-answer: its answer stops at the next token and the slot is free."""
    generator, url, _ = slow
    before = calls(generator)
    script = (
        "import sys, time\n"
        "from gradio_client import Client\n"
        "Client(sys.argv[1], verbose=False).submit('Where do sea otters live?', api_name='/chat')\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, url])
    try:
        wait_until_generating(generator, before, timeout=60)
    finally:
        process.kill()
        process.wait()
    time.sleep(1.0)
    stopped_at = generator.progress[before]
    time.sleep(0.5)
    assert generator.progress[before] == stopped_at < SLOW_TOKENS  # it stopped, well before the end
    answered = chat(new_client(url), "What do they eat?")
    assert answered["details"]["done"]


@pytest.mark.slow
def test_a_client_that_never_listens_gives_up_its_place(slow):
    """Joining the queue without ever reading the updates (a raw HTTP client) holds the slot for a
    moment only."""
    generator, url, _ = slow
    fn_index = new_client(url)._infer_fn_index("/chat", None)
    before = calls(generator)
    body = json.dumps({"data": ["Where do sea otters live?"], "fn_index": fn_index, "session_hash": "mute01"})
    request = urllib.request.Request(
        url + "gradio_api/queue/join", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_until_generating(generator, before, timeout=60)
    deadline = time.monotonic() + 10
    while True:  # stopped once its updates stay unread for 1.5 s
        progress = generator.progress[before]
        time.sleep(0.5)
        if generator.progress[before] == progress:
            break
        assert time.monotonic() < deadline
    assert generator.progress[before] < SLOW_TOKENS


def test_download_conversation_holds_every_turn(server):
    client = new_client(server)
    assert chat(client, "Where do sea otters live?")["details"]["stored"]
    second = chat(client, "What do they eat?")
    download = second["download"]
    link = download["value"]["url"] if "value" in download else download["url"]
    with urllib.request.urlopen(link, timeout=10) as response:
        text = response.read().decode("utf-8")
    assert text.startswith("# Conversation about “Otters”")
    assert "## 1. Where do sea otters live?" in text and "## 2. What do they eat?" in text
    assert second["details"]["text"] in text and "tokens in" in text


def test_a_pdf_upload_keeps_its_pages_and_evidence_says_which(server, tmp_path):
    from fixtures.pdfs import text_pdf

    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(
        text_pdf(["Otters float on their backs.", "Beavers build dams.", "Sea otters hold hands."], "Report")
    )
    client = new_client(server)
    switched = use(client, handle_file(str(pdf)), api_name="/use_file")
    assert "Now answering questions about" in switched["status"]
    result = chat(client, "Who holds hands?")
    details = result["details"]
    assert "Sea otters hold hands." in details["model_input"]
    evidence = details["evidence"]
    if evidence is not None:  # the tiny model's answer happened to quote the document
        assert evidence["quote"] in details["model_input"] and evidence["page"] in (1, 2, 3)

    encrypted = tmp_path / "secret.pdf"
    from fixtures.pdfs import encrypted_pdf

    encrypted.write_bytes(encrypted_pdf(["Hidden text."], user_password="pw"))
    refused = use(client, handle_file(str(encrypted)), api_name="/use_file")
    assert "password" in refused["status"] and "secret.pdf" in refused["status"]
    assert chat(client, "And beavers?")["details"]["model_input"].startswith(details["model_input"][:40])


@pytest.fixture(scope="module")
def local_site():
    """A web page served on 127.0.0.1: an article between a menu, a cookie banner and a footer."""
    page = (
        "<html><head><title>Otter news</title></head><body>"
        "<nav><a href='/'>Home</a> <a href='/about'>About us</a></nav>"
        "<div class='cookie-banner'>We use cookies. Accept all cookies?</div>"
        "<article><h1>Otters learn to use tools</h1>"
        + "".join(
            f"<p>Paragraph {i}: sea otters in the kelp forest crack shells with stones, which they keep "
            "in a pouch under their arm for the next meal.</p>"
            for i in range(6)
        )
        + "</article><footer>Copyright 2026 Otter News. All rights reserved.</footer></body></html>"
    ).encode()
    with web_page(page) as url:
        yield url


def test_a_web_page_by_its_address_keeps_its_article_only(tiny_dir, generator, local_site):
    demo = build_app(
        generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=4, allow_local_urls=True
    )
    with serving(demo) as url:
        client = new_client(url)
        switched = use(client, local_site, api_name="/use_url")
        assert "Otters learn to use tools" in switched["header"]
        model_input = chat(client, "What do otters keep in a pouch?")["details"]["model_input"]
        assert "crack shells with stones" in model_input
        for boilerplate in ("About us", "cookies", "Copyright"):
            assert boilerplate not in model_input


def test_a_public_server_refuses_local_addresses(server, local_site):
    # The module's server runs as on a Space (no --allow-local-urls): refused before any connection.
    client = new_client(server)
    refused = use(client, local_site, api_name="/use_url")
    assert "loopback" in refused["status"].lower() or "local" in refused["status"].lower()
    assert "Otters" in use(client, api_name="/use_default")["header"]


def test_the_header_names_the_model_folder_not_the_server_path(server, tiny_dir):
    header = use(new_client(server), api_name="/use_default")["header"]
    assert "<code>onnx</code>" in header and str(tiny_dir) not in header


def test_a_stock_export_is_served_with_a_notice_on_how_to_make_it_fast(published_like_dir):
    from cqa.hub import FAST_EXPORT_COMMAND

    generator = Seq2SeqGenerator.load(published_like_dir, threads=1)
    demo = build_app(generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=4)
    with serving(demo) as url:
        client = new_client(url)
        header = html.unescape(use(client, api_name="/use_default")["header"])
        assert "stock ONNX export" in header and FAST_EXPORT_COMMAND in header
        assert "CPU: " in header
        assert chat(client, "Where do sea otters live?")["details"]["done"]  # and it answers


@pytest.mark.slow
def test_a_full_line_gets_the_apps_busy_message(tiny_dir):
    generator = SlowGenerator.load(tiny_dir / "onnx", threads=1)
    demo = build_app(generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=20, queue_size=1)
    with serving(demo) as url:
        first = new_client(url).submit("alpha", api_name="/chat")
        wait_until_generating(generator, 0)
        second = new_client(url).submit("beta", api_name="/chat")  # waits: the line holds one
        time.sleep(1.0)
        third = chat(new_client(url), "gamma")
        assert "The app is busy" in third["notice"] and "Your question stays in the box" in third["notice"]
        assert named(first.result(timeout=60))["details"]["done"]
        assert named(second.result(timeout=60))["details"]["done"]


def test_a_forgotten_conversation_is_said_so_and_nothing_is_answered_about_another_document(generator):
    demo = build_app(generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=4, session_ttl=1)
    with serving(demo) as url:
        client = new_client(url)
        use(client, "Zebras\n\nZebras have stripes.", api_name="/use_text")
        assert "Zebras have stripes." in chat(client, "What do zebras have?")["details"]["model_input"]
        time.sleep(2.5)  # past the time to live
        late = chat(client, "And their colour?")
        assert "This conversation was forgotten" in late["notice"] and "still in the box" in late["notice"]
        assert "Otters" in late["header"] and late["chatbot"] == []
        assert skipped(late["details"])  # nothing was answered
        again = chat(client, "And their colour?")["details"]["model_input"]
        assert again == build_model_input(DOCUMENT.text, [], "And their colour?")
