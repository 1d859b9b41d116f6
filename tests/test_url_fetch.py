"""Fetching a web page by its address, safely.

Requests go only to servers these tests start on 127.0.0.1 (hence allow_loopback=True). Every other address
is tested by calling check_url on it, which refuses it before any connection is made.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cqa.documents import CheckedURL, DocumentError, check_url, fetch_url

ARTICLE = (
    "<html><head><title>Otters | Blog</title></head>"
    "<body><nav><a href='/'>Home</a> <a href='/a'>About</a></nav>"
    "<article><h1>Otters</h1><p>Sea otters use stones as tools to open clams.</p></article>"
    "<footer>Copyright 2024</footer></body></html>"
)


class Pages(BaseHTTPRequestHandler):
    """The pages of the local test server, by path."""

    protocol_version = "HTTP/1.0"  # one request per connection; bodies without a length end at the close

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        html_utf8 = {"Content-Type": "text/html; charset=utf-8"}
        if path == "/article":
            self.send(200, ARTICLE.encode(), html_utf8)
        elif path == "/article?lang=en":
            self.send(200, b"<p>English edition of the article.</p>", html_utf8)
        elif path == "/latin1":
            page = "<p>Café crème, naïve otters.</p>".encode("latin-1")
            self.send(200, page, {"Content-Type": "text/html; charset=ISO-8859-1"})
        elif path == "/meta-charset":
            page = (
                b'<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 \x93quoted\x94.</p></body>'
            )
            self.send(200, page, {"Content-Type": "text/html"})
        elif path == "/unknown-charset":
            self.send(200, "<p>Plain café.</p>".encode(), {"Content-Type": "text/html; charset=x-no-such"})
        elif path == "/not-utf8":
            self.send(200, b"<p>Bad \xff byte.</p>", {"Content-Type": "text/html"})
        elif path == "/plain":
            self.send(
                200, "First line\r\n\r\n\r\nSecond ☃.".encode(), {"Content-Type": "text/plain; charset=utf-8"}
            )
        elif path == "/host":
            self.send(200, f"Host: {self.headers['Host']}".encode(), {"Content-Type": "text/plain"})
        elif path == "/redirect":
            self.send(302, headers={"Location": "/article"})
        elif path == "/redirect-absolute":
            self.send(301, headers={"Location": f"http://127.0.0.1:{self.server.server_port}/plain"})
        elif path.startswith("/loop/"):
            self.send(302, headers={"Location": f"/loop/{int(path.rsplit('/', 1)[1]) + 1}"})
        elif path == "/to-private":
            self.send(302, headers={"Location": "http://10.0.0.1/admin"})
        elif path == "/to-metadata":
            self.send(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/to-file":
            self.send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/big":
            self.send(
                200, b"<p>" + b"a" * 2_000_000, {"Content-Type": "text/html", "Content-Length": "2000003"}
            )
        elif path == "/big-no-length":
            self.send(200, b"<p>" + b"a " * 1_000_000, {"Content-Type": "text/html"})
        elif path == "/image":
            self.send(200, b"\x89PNG\r\n\x1a\n", {"Content-Type": "image/png"})
        elif path == "/no-type":
            self.send(200, b"<p>What am I?</p>")
        elif path == "/drip-body":  # the headers at once, then the body a byte at a time, for 20 s
            self.send(200, b"<p>", {"Content-Type": "text/html"})
            for _ in range(100):
                time.sleep(0.2)
                try:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                except OSError:  # the client gave up, as it should
                    break
        elif path == "/png-as-html":
            self.send(200, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", {"Content-Type": "text/html"})
        elif path == "/latin1-no-charset":
            self.send(200, "<p>Café crème.</p>".encode("latin-1"), {"Content-Type": "text/html"})
        elif path == "/gzip":
            self.send(200, b"\x1f\x8b", {"Content-Type": "text/html", "Content-Encoding": "gzip"})
        else:
            self.send(404, b"not found", {"Content-Type": "text/plain"})


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def fetch(url: str, **options):
    return fetch_url(url, allow_loopback=True, **options)


# --- check_url: refusals of literal addresses, no request sent ---


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "a private address"),
        ("http://172.16.5.4/", "a private address"),
        ("http://192.168.1.1/", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),  # the cloud metadata service
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[fc00::1]/", "a private address"),
        ("http://[fd00:ec2::254]/", "a private address"),  # the IPv6 metadata service
        ("http://127.0.0.1/", "a loopback address"),
        ("http://[::1]:8080/", "a loopback address"),
        ("http://localhost/", "a loopback address"),
        ("http://localhost./", "a loopback address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://[::]/", "an unspecified address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://[ff02::1]/", "a multicast address"),
        ("http://240.0.0.1/", "a private address"),
        ("http://100.64.0.1/", "not a public address"),  # carrier-grade NAT
        ("http://[::ffff:127.0.0.1]/", "a loopback address"),  # IPv4-mapped IPv6
        ("http://[::ffff:7f00:1]/", "a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/", "a link-local address"),
        ("http://[64:ff9b::a00:1]/", "a private address"),  # NAT64 of 10.0.0.1
        ("http://[2002:a9fe:a9fe::]/", "a link-local address"),  # 6to4 of 169.254.169.254
        ("http://2130706433/", "a loopback address"),  # 127.0.0.1 in decimal
        ("http://0x7f000001/", "a loopback address"),  # in hex
        ("http://0177.0.0.1/", "a loopback address"),  # in octal
        ("http://0x7f.1/", "a loopback address"),
        ("http://127.1/", "a loopback address"),
        ("http://0/", "an unspecified address"),
        ("http://3232235777/", "a private address"),  # 192.168.1.1
    ],
)
def test_non_public_addresses_are_refused(url, reason):
    with pytest.raises(DocumentError, match=f"is at .*, {reason}; only public web addresses can be fetched"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file.txt", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("javascript:alert(1)", "only http:// and https://"),
        ("example.com/post", "only http:// and https://"),
        ("", r"\(empty\): only http"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http:///path", "no host name"),
        ("http://example.com:99999/", "not a valid web address"),
    ],
)
def test_malformed_urls_are_refused(url, message):
    with pytest.raises(DocumentError, match=message):
        check_url(url)


def test_public_literal_addresses_pass_unresolved():
    checked = check_url("https://93.184.215.14:8443/a/b?c=d#part")
    assert checked == CheckedURL("https", "93.184.215.14", 8443, "/a/b?c=d", ("93.184.215.14",))
    assert checked.url == "https://93.184.215.14:8443/a/b?c=d"
    checked = check_url("HTTP://[2606:4700:4700::1111]")
    assert (checked.scheme, checked.host, checked.port, checked.path) == (
        "http",
        "2606:4700:4700::1111",
        80,
        "/",
    )
    assert checked.url == "http://[2606:4700:4700::1111]/"


def test_international_names_and_paths_are_sent_in_ascii():
    checked = check_url("http://[2606:4700::1]/café au lait?q=ü")
    assert checked.path == "/caf%C3%A9%20au%20lait?q=%C3%BC"
    with pytest.raises(DocumentError, match="is not a valid host name"):
        check_url("http://" + "ü" * 70 + ".example/")  # a label over 63 characters


def test_allow_loopback_allows_loopback_only():
    for url in (
        "http://127.0.0.1:8000/x",
        "http://[::1]/",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
    ):
        assert check_url(url, allow_loopback=True).addresses
    assert all(address in ("127.0.0.1", "::1") for address in check_url("http://localhost/", True).addresses)
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://0.0.0.0/", "http://[fc00::1]/"):
        with pytest.raises(DocumentError, match="only public web addresses"):
            check_url(url, allow_loopback=True)


# --- fetch_url against a local server ---


def test_fetch_keeps_the_main_text_and_the_title(site):
    document = fetch(f"{site}/article")
    assert document.title == "Otters"
    assert document.text == "Otters\n\nSea otters use stones as tools to open clams."
    assert document.source == f"{site}/article"
    assert fetch(f"{site}/article?lang=en#top").text == "English edition of the article."


def test_fetch_of_a_loopback_server_is_refused_unless_allowed(site):
    with pytest.raises(DocumentError, match="a loopback address; only public web addresses"):
        fetch_url(f"{site}/article")


def test_fetch_tries_each_address_of_a_name(site):
    # localhost may resolve to ::1 first, where nothing listens: the next checked address is used.
    port = site.rsplit(":", 1)[1]
    assert fetch(f"http://localhost:{port}/plain").title == "First line"


def test_the_connection_goes_to_the_checked_address_with_the_name_in_the_host_header(site):
    port = site.rsplit(":", 1)[1]
    assert fetch(f"http://localhost:{port}/host").text == f"Host: localhost:{port}"
    assert fetch(f"{site}/host").text == f"Host: 127.0.0.1:{port}"


def test_plain_text_pages(site):
    document = fetch(f"{site}/plain")
    assert (document.title, document.text) == ("First line", "First line\n\nSecond ☃.")


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/latin1", "Café crème, naïve otters."),  # charset from the header
        ("/meta-charset", "Café “quoted”."),  # from <meta charset>
        ("/unknown-charset", "Plain café."),  # an unknown charset: UTF-8
        ("/not-utf8", "Bad ÿ byte."),  # no charset and not UTF-8: windows-1252, as browsers read it
        ("/latin1-no-charset", "Café crème."),
    ],
)
def test_fetch_decodes_the_page_charset(site, path, text):
    assert fetch(site + path).text == text


def test_redirects_are_followed(site):
    assert fetch(f"{site}/redirect").text.startswith("Otters")
    document = fetch(f"{site}/redirect-absolute")
    assert document.source == f"{site}/plain"  # where the text came from


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/to-private", r"http://10\.0\.0\.1/admin: 10\.0\.0\.1 is at 10\.0\.0\.1, a private address"),
        ("/to-metadata", r"169\.254\.169\.254 is at 169\.254\.169\.254, a link-local address"),
        ("/to-file", r"file:///etc/passwd: only http:// and https://"),
    ],
)
def test_redirects_to_refused_addresses_are_refused_before_connecting(site, path, message):
    start = time.monotonic()
    with pytest.raises(DocumentError, match=message):
        fetch(site + path, timeout=30)
    assert time.monotonic() - start < 5  # no attempt to reach 10.0.0.1 (it would time out)


def test_too_many_redirects_are_refused(site):
    with pytest.raises(DocumentError, match=r"/loop/0: more than 5 redirects; not followed"):
        fetch(f"{site}/loop/0")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big", r"/big is 2\.0 MB; the limit for web pages is 1 MB\. Save the part you need"),
        ("/big-no-length", r"/big-no-length is larger than 1 MB, the limit for web pages"),
        ("/image", r"/image is image/png, not a web page or plain text"),
        ("/no-type", "did not say what kind of document it is"),
        ("/gzip", "gzip-compressed"),
        ("/png-as-html", r"/png-as-html is not a web page: it holds binary data"),
        ("/missing", r"/missing: the server answered 404"),
    ],
)
def test_pages_that_cannot_be_used_are_refused(site, path, message):
    with pytest.raises(DocumentError, match=message):
        fetch(site + path)


def test_the_size_cap_can_be_lowered(site):
    with pytest.raises(DocumentError, match=r"larger than 0\.0001 MB"):
        fetch(f"{site}/article", max_bytes=100)


@pytest.fixture
def silent_server():
    """A server that accepts connections, then sends one byte every 0.2 s and never finishes."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        with listener:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    while not stop.wait(0.2):
                        try:
                            connection.sendall(b"H")
                        except OSError:  # the client has gone
                            break

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    thread.join(5)


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.0.8/",
        "http://[::ffff:192.0.0.8]/",
        "http://192.88.99.1/",
        "http://[3fff::1]/",
        "http://[2001:db8::1]/",
    ],
)
def test_special_purpose_ranges_that_python_calls_global_are_refused(url):
    with pytest.raises(DocumentError, match="only public web addresses can be fetched"):
        check_url(url)


def test_a_body_that_trickles_in_is_given_up_in_time(site):
    """http.client drops its socket reference while it reads a body that ends at the close: the time
    limit must still cut it (it used to wait for the whole trickle, 20 s here, holding the fetch)."""
    start = time.monotonic()
    with pytest.raises(DocumentError, match="the server did not answer in time"):
        fetch(site + "/drip-body", timeout=1.5)
    assert time.monotonic() - start < 5


def test_a_server_that_never_answers_is_given_up_in_time(silent_server):
    start = time.monotonic()
    with pytest.raises(DocumentError, match="the server did not answer in time"):
        fetch(silent_server, timeout=1.0)
    assert time.monotonic() - start < 5  # the drip of bytes does not restart the time-out


def test_a_closed_port_is_reported():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(DocumentError, match=rf"127\.0\.0\.1:{port}/ could not be fetched \(.*refused"):
        fetch(f"http://127.0.0.1:{port}/")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_certificates_are_verified(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    make_certificate = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost".split()
    subprocess.run(
        [*make_certificate, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DocumentError, match=r"certificate could not be verified .*self.signed"):
            fetch(f"https://127.0.0.1:{server.server_port}/article")
    finally:
        server.shutdown()
        server.server_close()
