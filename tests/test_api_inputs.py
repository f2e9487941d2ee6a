"""Image inputs: the SSRF guard (every spelling of a non-public address), data: URLs, sniffing,
and real fetches from a local HTTP server (size cap, timeout, redirects re-checked, the
connection going to the address that was checked)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import zlib

import pytest
from api_support import ImageServer, png_bytes

from wanserve.api.errors import ApiError
from wanserve.api.inputs import InputFolder, RemoteFetcher, parse_data_url, sniff
from wanserve.api.ssrf import AddressPolicy, URLNotAllowed, is_public, parse_ip_literal

DENY = AddressPolicy()


def run(coro):
    return asyncio.run(coro)


def fixed_resolver(answers: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return answers[host]

    return resolve


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("spelling", [
    "127.0.0.1", "127.1", "127.000.000.001", "2130706433", "0x7f000001", "0x7f.0.0.1", "017700000001",
    "0177.0.0.1", "0", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "100.100.100.200", "224.0.0.1", "255.255.255.255", "192.0.2.10", "198.18.0.1",
    "::1", "[::1]", "::", "::ffff:127.0.0.1", "::ffff:7f00:1", "[::ffff:169.254.169.254]", "::ffff:10.0.0.1",
    "fe80::1", "fe80::1%eth0", "fc00::1", "fd00:ec2::254", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "::127.0.0.1", "ff02::1", "2001:db8::1",
])
def test_every_spelling_of_a_non_public_address_is_refused(spelling):
    address = parse_ip_literal(spelling)
    assert address is not None, spelling
    assert not is_public(address)
    with pytest.raises(URLNotAllowed):
        run(DENY.resolve(spelling, 80, fixed_resolver({})))


@pytest.mark.parametrize("spelling", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                      "134744072", "0x08080808"])
def test_public_addresses_pass(spelling):
    address = parse_ip_literal(spelling)
    assert address is not None and is_public(address)
    assert run(DENY.resolve(spelling, 80, fixed_resolver({}))) == [address]


def test_integer_and_octal_spellings_mean_what_resolvers_mean():
    assert parse_ip_literal("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert parse_ip_literal("017700000001") == ipaddress.ip_address("127.0.0.1")
    assert parse_ip_literal("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert parse_ip_literal("example.com") is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "api.localhost",
                                  "metadata.google.internal", "Metadata.Google.Internal."])
def test_local_and_metadata_names_are_refused_without_asking_dns(host):
    calls: list[str] = []
    with pytest.raises(URLNotAllowed):
        run(DENY.resolve(host, 80, fixed_resolver({}, calls)))
    assert calls == []


def test_a_name_resolving_to_a_private_address_is_refused_even_beside_a_public_one():
    resolver = fixed_resolver({"sneaky.example": ["93.184.216.34", "10.1.2.3"],
                               "ipv6.example": ["::ffff:127.0.0.1"],
                               "fine.example": ["93.184.216.34"]})
    with pytest.raises(URLNotAllowed, match="10.1.2.3"):
        run(DENY.resolve("sneaky.example", 80, resolver))
    with pytest.raises(URLNotAllowed):
        run(DENY.resolve("ipv6.example", 80, resolver))
    assert [str(a) for a in run(DENY.resolve("fine.example", 80, resolver))] == ["93.184.216.34"]


def test_allowed_hosts_networks_and_private_urls():
    resolver = fixed_resolver({"images.internal": ["10.0.0.7"], "other.internal": ["10.0.0.8"]})
    by_name = AddressPolicy.from_settings(["Images.Internal."], False)
    assert run(by_name.resolve("images.internal", 80, resolver))
    with pytest.raises(URLNotAllowed):
        run(by_name.resolve("other.internal", 80, resolver))
    by_network = AddressPolicy.from_settings(["10.0.0.0/24"], False)
    assert run(by_network.resolve("other.internal", 80, resolver))
    with pytest.raises(URLNotAllowed):
        run(by_network.resolve("127.0.0.1", 80, resolver))
    private = AddressPolicy.from_settings([], True)
    assert run(private.resolve("127.0.0.1", 80, resolver))
    # Cloud metadata stays closed with ALLOW_PRIVATE_URLS; only naming it opens it.
    with pytest.raises(URLNotAllowed):
        run(private.resolve("169.254.169.254", 80, resolver))
    assert run(AddressPolicy.from_settings(["169.254.169.254"], False).resolve("169.254.169.254", 80, resolver))


# ------------------------------------------------------------------ data: URLs and sniffing
def test_data_urls_decode_base64_and_percent_encoding():
    png = png_bytes()
    import base64

    encoded = base64.b64encode(png).decode()
    assert parse_data_url(f"data:image/png;base64,{encoded}", "image_url", 10**6) == png
    assert parse_data_url(f"data:;base64,{encoded[:40]}\n{encoded[40:]}", "image_url", 10**6) == png
    assert parse_data_url("data:text/plain,hello%20world", "image_url", 100) == b"hello world"
    with pytest.raises(ApiError) as e:
        parse_data_url("data:image/png;base64,@@@@", "image_url", 100)
    assert e.value.status == 422 and e.value.field == "image_url"
    with pytest.raises(ApiError) as e:
        parse_data_url(f"data:image/png;base64,{encoded}", "image_url", 100)
    assert e.value.status == 413
    with pytest.raises(ApiError):
        parse_data_url("data:image/png;base64", "image_url", 100)


def test_types_are_sniffed_from_bytes():
    assert sniff(png_bytes(), "image") == ".png"
    assert sniff(b"\xff\xd8\xff\xe0rest", "image") == ".jpg"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ", "image") == ".webp"
    assert sniff(b"<svg xmlns=...>", "image") is None
    assert sniff(b"\0\0\0\x18ftypmp42", "video") == ".mp4"
    assert sniff(png_bytes(), "video") is None


def _bomb_png(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels with tiny (compressed) data."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\0" + b"\0" * side
    data = zlib.compress(row * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_input_folder_checks_images_and_keeps_nothing_it_refused(tmp_path):
    folder = InputFolder(tmp_path / "inputs" / "t1")
    path = run(folder.store(png_bytes(), "image", "image"))
    assert path.endswith(".png") and (tmp_path / "inputs" / "t1").is_dir()
    again = InputFolder(tmp_path / "inputs" / "t1")
    assert run(again.store(png_bytes(), "image", "image")) == path and again.written == []  # same bytes, same file
    for bad, code in ((b"GIF89a" + b"\0" * 20, "invalid_image"), (b"plain text", "invalid_image"),
                      (_bomb_png(20000), "invalid_image")):
        with pytest.raises(ApiError) as e:
            run(folder.store(bad, "image_url", "image"))
        assert (e.value.status, e.value.code, e.value.field) == (422, code, "image_url")
    assert sorted(p.name for p in (tmp_path / "inputs" / "t1").iterdir()) == [path.rsplit("/", 1)[1]]
    folder.discard()
    assert not (tmp_path / "inputs" / "t1").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_decompression_bomb_message_names_the_limit(tmp_path):
    with pytest.raises(ApiError, match="megapixels"):
        run(InputFolder(tmp_path).store(_bomb_png(10000), "image", "image"))  # 100 MP


# ------------------------------------------------------------------ fetching
@pytest.fixture(scope="module")
def image_server():
    server = ImageServer()
    yield server
    server.close()


def fetcher(allowed=("127.0.0.1",), timeout=5.0, limit=10**6, resolver=None):
    policy = AddressPolicy.from_settings(list(allowed), False)
    kwargs = {"resolver": resolver} if resolver else {}
    return RemoteFetcher(policy, timeout, limit, **kwargs)


def test_fetch_from_an_allowed_host(image_server):
    png = png_bytes()
    image_server.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, png)
    assert run(fetcher().fetch(image_server.url("/cat.png"), "image_url")) == png


def test_fetch_refuses_loopback_unless_allowed(image_server):
    image_server.routes["/cat.png"] = (200, {}, png_bytes())
    for url in (image_server.url("/cat.png"), image_server.url("/cat.png", "localhost"),
                image_server.url("/cat.png", "2130706433"), image_server.url("/cat.png", "[::ffff:127.0.0.1]")):
        with pytest.raises(ApiError) as e:
            run(fetcher(allowed=()).fetch(url, "image_url"))
        assert e.value.code == "url_not_allowed" and e.value.status == 422, url


def test_redirects_are_checked_again(image_server):
    image_server.routes["/cat.png"] = (200, {}, png_bytes())
    image_server.routes["/to-metadata"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    image_server.routes["/to-cat"] = (301, {"Location": "/cat.png"}, b"")
    image_server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    assert run(fetcher().fetch(image_server.url("/to-cat"), "image_url")) == png_bytes()
    with pytest.raises(ApiError) as e:
        run(fetcher().fetch(image_server.url("/to-metadata"), "image_url"))
    assert e.value.code == "url_not_allowed"
    with pytest.raises(ApiError, match="redirects"):
        run(fetcher().fetch(image_server.url("/loop"), "image_url"))


def test_size_cap_from_header_and_from_the_stream(image_server):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 5000
    image_server.routes["/big.png"] = (200, {}, big)

    def chunked(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(10):
            handler.wfile.write(b"3e8\r\n" + b"\0" * 1000 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    image_server.routes["/chunked.png"] = chunked
    for path in ("/big.png", "/chunked.png"):
        with pytest.raises(ApiError) as e:
            run(fetcher(limit=4000).fetch(image_server.url(path), "image_url"))
        assert e.value.status == 413 and e.value.field == "image_url"


def test_slow_servers_hit_the_fetch_timeout(image_server):
    def slow(handler):
        time.sleep(2)
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    image_server.routes["/slow.png"] = slow
    start = time.perf_counter()
    with pytest.raises(ApiError, match="FETCH_TIMEOUT") as e:
        run(fetcher(timeout=0.5).fetch(image_server.url("/slow.png"), "image_url"))
    assert e.value.code == "fetch_failed" and time.perf_counter() - start < 1.5


def test_errors_from_the_remote_server_are_4xx(image_server):
    with pytest.raises(ApiError) as e:
        run(fetcher().fetch(image_server.url("/missing.png"), "image_url"))
    assert (e.value.status, e.value.code) == (422, "fetch_failed") and "404" in e.value.message
    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "http://user:pw@127.0.0.1/a.png", "http:///x",
                "gopher://127.0.0.1:70/", "http://127.0.0.1:99999/"):
        with pytest.raises(ApiError) as e:
            run(fetcher().fetch(url, "image_url"))
        assert e.value.status == 422, url


def test_the_connection_goes_to_the_address_that_was_checked(image_server):
    """A name is resolved once, checked, and that address is connected to: a second (rebound)
    DNS answer is never asked for. Here the name has no real DNS at all."""
    png = png_bytes()
    image_server.routes["/checked.png"] = (200, {}, png)
    calls: list[str] = []
    answers = {"images.test": ["127.0.0.1"]}
    allowed = fetcher(allowed=("images.test",), resolver=fixed_resolver(answers, calls))
    assert run(allowed.fetch(image_server.url("/checked.png", "images.test"), "image_url")) == png
    assert calls == ["images.test"]
    with pytest.raises(ApiError) as e:  # the same name, not allowed: refused before connecting
        run(fetcher(allowed=(), resolver=fixed_resolver(answers)).fetch(
            image_server.url("/checked.png", "images.test"), "image_url"))
    assert e.value.code == "url_not_allowed"
    assert image_server.hits["/checked.png"] == 1
