"""The GroupLens download path, against a real HTTP server on 127.0.0.1 serving a zip the test builds."""

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_core.download import ChecksumError, fetch_movielens
from recsys_core.ingestion import load_movielens

ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


def release_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "1\t1\t5\t881250949\n2\t1\t4\t881250950\n")
        archive.writestr("ml-100k/u.item", ITEM)
    return buffer.getvalue()


class Server:
    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    body = release_zip()
    srv = Server({"/movielens/ml-100k.zip": body, "/movielens/ml-100k.zip.md5": hashlib.md5(body).hexdigest().encode() + b"  ml-100k.zip\n"})
    yield srv
    srv.httpd.shutdown()


def test_download_verifies_md5_extracts_and_caches(server: Server, tmp_path: Path) -> None:
    folder = fetch_movielens("ml-100k", cache_dir=tmp_path, base_url=server.url)
    ratings, items = load_movielens(folder, "ml-100k")
    assert len(ratings) == 2 and items.loc[0, "title"] == "Toy Story"
    assert fetch_movielens("ml-100k", cache_dir=tmp_path, base_url=server.url) == folder
    assert server.requests == ["/movielens/ml-100k.zip", "/movielens/ml-100k.zip.md5"]  # second call: cache only


def test_pinned_sha256_mismatch_discards_the_download(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="does not match"):
        fetch_movielens("ml-100k", cache_dir=tmp_path, base_url=server.url, sha256="0" * 64)
    assert not list(tmp_path.glob("ml-100k*"))


def test_corrupt_archive_is_rejected_by_published_md5(server: Server, tmp_path: Path) -> None:
    server.files["/movielens/ml-100k.zip.md5"] = b"d41d8cd98f00b204e9800998ecf8427e  ml-100k.zip\n"
    with pytest.raises(ChecksumError):
        fetch_movielens("ml-100k", cache_dir=tmp_path, base_url=server.url)


def test_missing_release_fails_without_retrying_a_404(server: Server, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="404"):
        fetch_movielens("ml-1m", cache_dir=tmp_path, base_url=server.url, backoff_seconds=0)
    assert server.requests == ["/movielens/ml-1m.zip"]
