"""The media fetcher against hostile requests: IPv6 forms of private addresses, DNS and port probing through its
refusals, and local files swapped for links while they are read."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import threading
import time

import pytest

from rerankrt.errors import InputError
from rerankrt.server.media import GuardedBackend, MediaFetcher, MediaLimits, MediaRef
from tests.support import fetch, fetch_refused, free_port, image_ref, png

# --- the SSRF guard: every spelling of a private address ---------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::127.0.0.1",
        "::ffff:0:7f00:1",  # IPv4-translated
        "64:ff9b::7f00:1",  # NAT64 (well-known prefix)
        "64:ff9b::a9fe:a9fe",  # NAT64 169.254.169.254, cloud metadata
        "64:ff9b:1::7f00:1",  # local-use NAT64: the IPv4 part cannot be read back safely
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
        "::2",
        "192.0.0.8",  # IETF protocol assignments
        "198.18.0.1",  # benchmarking
    ],
)
def test_ipv6_forms_of_private_addresses_are_refused(address):
    assert not GuardedBackend([]).allows(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_forms_of_public_addresses_stay_allowed(address):
    assert GuardedBackend([]).allows(ipaddress.ip_address(address))


def test_a_network_allowed_for_ipv4_covers_its_ipv6_forms_only():
    guard = GuardedBackend([ipaddress.ip_network("10.0.0.0/8")])
    assert guard.allows(ipaddress.ip_address("64:ff9b::a00:1")) and guard.allows(ipaddress.ip_address("2002:a00:1::"))
    assert not guard.allows(ipaddress.ip_address("64:ff9b::7f00:1"))


# --- refusals that do not answer questions about the network ----------------------------------------


def test_refusals_do_not_say_what_a_host_resolves_to(monkeypatch):
    port = free_port()
    private = fetch_refused(
        MediaLimits(), image_ref(f"http://localhost:{port}/a.png"), "does not resolve to an address"
    )
    assert "127.0.0.1" not in str(private) and "::1" not in str(private)

    real = socket.getaddrinfo

    def no_such_host(host, *args, **kwargs):
        if host == "no-such-host.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    missing = fetch_refused(MediaLimits(), image_ref(f"http://no-such-host.test:{port}/a.png"), "does not resolve to")
    assert str(missing).replace("no-such-host.test", "localhost") == str(private)  # an unknown name reads the same


@pytest.fixture
def probed_ports():
    """Four ports of an allowed network, each failing differently: closed, closing at once, not HTTP, silent."""
    servers, threads, stop = [], [], threading.Event()

    def serve(behaviour):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.1)
        servers.append(server)

        def loop():
            held = []
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                if behaviour == "banner":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    conn.close()
                elif behaviour == "close":
                    conn.close()
                else:
                    held.append(conn)  # never answers
            for conn in held:
                conn.close()

        threads.append(threading.Thread(target=loop, daemon=True))
        threads[-1].start()
        return server.getsockname()[1]

    ports = {"closed": free_port(), "close": serve("close"), "banner": serve("banner"), "silent": serve("silent")}
    yield ports
    stop.set()
    for thread in threads:
        thread.join(2)
    for server in servers:
        server.close()


def test_connection_failures_all_read_the_same(probed_ports):
    """Port scanning through the fetcher learns nothing from its messages (only timing, which it cannot hide)."""
    limits = MediaLimits(allowed_networks=("127.0.0.1/32",), fetch_timeout=0.5)
    messages = {
        kind: fetch_refused(limits, image_ref(f"http://127.0.0.1:{port}/a.png"), "could not fetch the image").message
        for kind, port in probed_ports.items()
    }
    assert len(set(messages.values())) == 1, messages
    assert str(probed_ports["banner"]) not in next(iter(messages.values()))


# --- local files: no link is followed, and every failure is the client's 400 ----------------------


def test_a_link_swapped_in_while_files_are_read_never_leaks(tmp_path):
    media, outside = tmp_path / "media", tmp_path / "outside"
    media.mkdir()
    outside.mkdir()
    inside_bytes, secret_bytes = png((10, 20)), png((7, 7))
    (media / "regular.png").write_bytes(inside_bytes)
    (outside / "secret.png").write_bytes(secret_bytes)
    fetcher = MediaFetcher(MediaLimits(allowed_local_media_path=str(media)))
    target = media / "swap.png"
    stop = threading.Event()

    def swap():
        n = 0
        while not stop.is_set():
            n += 1
            link, copy = media / f".link{n}", media / f".copy{n}"
            os.symlink(outside / "secret.png", link)
            os.replace(link, target)
            shutil.copyfile(media / "regular.png", copy)
            os.replace(copy, target)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    read, refused_links, leaked = 0, 0, 0
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline or read < 200:
            try:
                data = fetcher._read_local(MediaRef("image", str(target), "documents[0]"))
            except InputError as error:  # a link, or the name mid-swap: the client's 400, never a 500
                assert error.field == "documents[0]"
                refused_links += 1
                continue
            read += 1
            leaked += data == secret_bytes
    finally:
        stop.set()
        swapper.join(5)
    assert leaked == 0, f"{leaked} of {read} reads returned the file outside the allowed directory"
    assert read and refused_links


def test_every_local_file_failure_is_a_400(tmp_path):
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (media / "in.png").write_bytes(png((4, 4)))
    os.mkfifo(media / "pipe.png")  # opening it for reading would block
    os.symlink(media / "loop.png", media / "loop.png")  # a link to itself
    os.symlink(media / "sub", media / "dirlink")
    (media / "unreadable.png").write_bytes(b"x")
    allowed = MediaLimits(allowed_local_media_path=str(media))
    cases = {
        str(media / "pipe.png"): "not a regular file",
        str(media / "loop.png"): "symbolic link",
        str(media / "dirlink" / "x.png"): "links are not followed",
        str(media / "sub"): "cannot read the file",
        str(media / "in.png" / "x"): "cannot read the file|a link or a file",
        str(media / ("x" * 300 + ".png")): "cannot read the file",
        str(media / "missing.png"): "cannot read the file",
        f"{media}/in\x00.png": "not a valid file path",
        f"file://{media}/%00.png": "not a valid file path",
        str(media): "cannot read the file",
    }
    done = threading.Event()
    errors = {}

    def run():
        for url in cases:
            try:
                fetch(allowed, image_ref(url, "documents[0]"))
            except InputError as error:
                errors[url] = str(error)
            except Exception as error:  # noqa: BLE001 - what the server would answer with a 500
                errors[url] = f"500: {type(error).__name__}: {error}"
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(20), "reading a local file blocked"
    for url, message in cases.items():
        assert url in errors and errors[url].startswith("documents[0]: "), (url, errors.get(url))
        assert any(m in errors[url] for m in message.split("|")), (url, errors[url])
