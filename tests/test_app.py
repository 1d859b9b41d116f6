"""The chat app, launched for real in-process with the tiny ONNX model, driven through gradio_client.

Each gradio_client.Client is one session: its conversation lives in the server's gr.State.
"""

from __future__ import annotations

import contextlib
import copy
import html
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def generator(tiny_dir) -> Seq2SeqGenerator:
    return Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)


@pytest.fixture(scope="module")
def server(generator) -> str:
    demo = build_app(generator, DOCUMENT, max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens=8)
    demo.queue(max_size=32)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def new_client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


def chat(client: Client, question: str) -> dict:
    """One turn; returns the chat endpoint's outputs by name."""
    chatbot, question_box, notice, input_info, dialogue, details = client.predict(question, api_name="/chat")
    return {
        "chatbot": chatbot,
        "question_box": question_box,
        "notice": notice,
        "input_info": input_info,
        "dialogue": dialogue,
        "details": details,
    }


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
    assert result["question_box"] == ""  # sending clears the box
    assert result["notice"] == ""


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
    assert after["notice"] == ""
    assert after["details"]["model_input"].endswith(
        f"<Q1> Where do sea otters live? <A1> {first['text']} <Q> What do they eat? <A> "
    )
    assert len(after["chatbot"]) == 4  # neither bad question reached the conversation


def test_oversized_document_is_truncated_with_a_notice(server, generator):
    client = new_client(server)
    long_text = " ".join(f"Paragraph {i} says otters are mammals." for i in range(600))
    client.predict(long_text, api_name="/use_text")
    result = chat(client, "Are otters mammals?")
    assert "only its first" in result["notice"]
    assert "only its first" in result["input_info"]
    details = result["details"]
    assert details["truncated"] and details["done"]
    assert details["model_input"].endswith(" || <Q> Are otters mammals? <A> ")
    assert generator.count_tokens(details["model_input"]) <= MAX_INPUT_TOKENS


def test_clear_resets_the_conversation(server):
    client = new_client(server)
    chat(client, "Where do sea otters live?")
    chatbot, *_ = client.predict(api_name="/clear")
    assert chatbot == []
    model_input = chat(client, "What do they eat?")["details"]["model_input"]
    assert model_input == build_model_input(DOCUMENT.text, [], "What do they eat?")


def test_retry_replaces_the_last_answer(server):
    client = new_client(server)
    first = chat(client, "Where do sea otters live?")["details"]
    chat(client, "What do they eat?")
    chatbot, _, _, _, _, details = client.predict(api_name="/retry")
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
    header, status, chatbot, notice, *_ = client.predict(handle_file(str(page)), api_name="/use_file")
    assert "Zebras" in header and "Zebras" in status
    assert chatbot == [] and "starts over" in notice
    model_input = chat(client, "What do zebras have?")["details"]["model_input"]
    assert model_input == "Zebras\n\nZebras have black and white stripes. || <Q> What do zebras have? <A> "

    # A bad upload is refused with a message; the document and the conversation stay as they were.
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"GIF89a\x00\x01\x00\x00")
    _, status, *_ = client.predict(handle_file(str(binary)), api_name="/use_file")
    assert "binary" in status and "image\\.txt" in status  # the file's name, escaped: shown literally
    kept = chat(client, "What colour?")["details"]["model_input"]
    assert kept.startswith("Zebras\n\nZebras have") and "<Q1> What do zebras have? <A1>" in kept

    _, status, *_ = client.predict("   ", api_name="/use_text")
    assert "no text" in status

    header, *_ = client.predict(api_name="/use_default")
    assert "Otters" in header
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
    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        client = new_client(f"http://127.0.0.1:{port}/")
        first = chat(client, "Where do sea otters live?")
        failed = chat(client, "What do they eat?")
        assert "The model failed on this question" in failed["notice"]
        assert "injected failure" in failed["notice"]
        assert failed["question_box"] == "What do they eat?"  # nothing typed is lost
        assert failed["chatbot"] == first["chatbot"]  # the first turn is still there, nothing added
    finally:
        demo.close()


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
        details = new_client(url).predict("What do otters use?", api_name="/chat")[-1]
        assert details["done"]
        assert details["truncated"]  # MAX_INPUT_TOKENS=300 from the environment
        assert details["model_input"].startswith("Otters\n\nSea otters use stones as tools.")
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
