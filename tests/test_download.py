"""Issue 15 item 1: `python -m causalneg.data download NAME DEST`, against a loopback HTTP server (127.0.0.1 only)
serving a tiny BEIR zip built here, with HTTP Range support so that resumed downloads can be checked."""

import hashlib
import io
import os
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import causalneg.data as data
from causalneg.data import DownloadError, download_beir, load_beir, write_beir

ROOT = Path(__file__).resolve().parents[1]


def beir_zip(tmp_path, name="tiny", score=1, top=None):
    "Bytes of a zip holding a small valid BEIR folder under `top/` (default: the dataset name, as BEIR ships)."
    src = tmp_path / "src" / name
    write_beir(
        src,
        {f"d{i}": {"title": f"T{i}", "text": f"document {i} " * 20} for i in range(30)},
        {"q1": "first", "q2": "second"},
        {"test": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 1}}},
    )
    if score != 1:
        (src / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t{score}\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # stored: a few KB, so cut points fall inside
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, f"{name if top is None else top}/{p.relative_to(src)}".lstrip("/"))
    return buf.getvalue()


class Server:
    "Serves `files` (path -> bytes) on 127.0.0.1, honouring `Range: bytes=N-` unless `ranges` is False."

    def __init__(self):
        self.files, self.requests, self.ranges, self.cut = {}, [], True, {}
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append((self.path, rng))
                body = srv.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and srv.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = srv.cut.pop(self.path, None)  # drop the connection after `cut` bytes, once
                self.wfile.write(body[start:cut] if cut is not None else body[start:])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def tiny(tmp_path, server):
    body = beir_zip(tmp_path)
    server.files["/tiny.zip"] = body
    return body, hashlib.md5(body).hexdigest(), server.url + "/tiny.zip"


def listing(dest):
    return sorted(p.name for p in Path(dest).iterdir()) if Path(dest).exists() else []


def test_success_then_second_call_skips(tmp_path, server, tiny, capsys):
    body, md5, url = tiny
    dest = tmp_path / "beir"
    assert download_beir("tiny", dest, url, md5, progress=False) == dest / "tiny"
    assert listing(dest) == ["tiny"]  # no .part, no temporary folder
    corpus, queries, qrels = load_beir(dest / "tiny", "test")
    assert len(corpus) == 30 and qrels == {"q1": {"d1": 1}}
    n = len(server.requests)
    assert download_beir("tiny", dest, url, md5, progress=False) == dest / "tiny"
    assert len(server.requests) == n, "a valid existing copy must not be downloaded again"
    assert "nothing to download" in capsys.readouterr().err


def test_cli_success_and_default_address_and_md5(tmp_path, server, tiny, monkeypatch, capsys):
    body, md5, _ = tiny
    monkeypatch.setattr(data, "BEIR_URL", server.url + "/{name}.zip")
    monkeypatch.setitem(data.BEIR_MD5, "tiny", md5)
    assert data.main(["download", "tiny", str(tmp_path / "beir"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "beir" / "tiny")
    assert server.requests == [("/tiny.zip", None)]
    monkeypatch.setitem(data.BEIR_MD5, "other", "0" * 32)  # a published md5 that the served file does not match
    server.files["/other.zip"] = body
    assert data.main(["download", "other", str(tmp_path / "beir"), "--no-progress"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_no_known_md5_warns(tmp_path, tiny, capsys):
    _, _, url = tiny
    download_beir("tiny", tmp_path / "beir", url, progress=False)
    assert "no published md5" in capsys.readouterr().err


def test_wrong_md5(tmp_path, tiny):
    _, md5, url = tiny
    dest = tmp_path / "beir"
    with pytest.raises(DownloadError, match=f"checksum mismatch for {url}: md5 {md5}, expected f{{32}}"):
        download_beir("tiny", dest, url, "f" * 32, progress=False)
    assert listing(dest) == []


def test_truncated_zip(tmp_path, server, tiny):
    body, md5, _ = tiny
    server.files["/cut.zip"] = body[: len(body) // 2]
    dest = tmp_path / "beir"
    with pytest.raises(DownloadError, match="cut.zip.part is not a valid zip file"):
        download_beir("cut", dest, server.url + "/cut.zip", progress=False)
    assert listing(dest) == []
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_beir("cut", dest, server.url + "/cut.zip", md5, progress=False)
    assert listing(dest) == []


def test_corrupt_member(tmp_path, server, tiny):
    body, _, _ = tiny
    bad = bytearray(body)
    for j in range(60, 90):
        bad[j] ^= 0xFF  # inside corpus.jsonl's stored data: its CRC no longer matches
    server.files["/bad.zip"] = bytes(bad)
    with pytest.raises(DownloadError, match="not a valid zip file .member tiny/corpus.jsonl fails its CRC check"):
        download_beir("bad", tmp_path / "beir", server.url + "/bad.zip", progress=False)
    assert listing(tmp_path / "beir") == []


def test_not_a_zip(tmp_path, server):
    server.files["/page.zip"] = b"<html><body>Service temporarily unavailable</body></html>"
    with pytest.raises(DownloadError, match="not a valid zip file"):
        download_beir("page", tmp_path / "beir", server.url + "/page.zip", progress=False)
    assert listing(tmp_path / "beir") == []


def test_http_404_names_status_and_url(tmp_path, server, capsys):
    url = server.url + "/missing.zip"
    with pytest.raises(DownloadError, match=f"HTTP error 404 .*{url}"):
        download_beir("missing", tmp_path / "beir", url, progress=False)
    assert not (tmp_path / "beir" / "missing").exists() and listing(tmp_path / "beir") == []
    assert data.main(["download", "missing", str(tmp_path / "beir"), "--url", url, "--no-progress"]) == 1
    assert "HTTP error 404" in capsys.readouterr().err


def test_partial_download_is_resumed_with_range(tmp_path, server, tiny):
    body, md5, url = tiny
    dest = tmp_path / "beir"
    dest.mkdir()
    (dest / "tiny.zip.part").write_bytes(body[:1000])
    download_beir("tiny", dest, url, md5, progress=True)  # with the tqdm bar, as on the command line
    assert server.requests == [("/tiny.zip", "bytes=1000-")]
    assert listing(dest) == ["tiny"] and load_beir(dest / "tiny", "dev")[2] == {"q2": {"d2": 1}}


def test_partial_download_restarts_when_server_ignores_range(tmp_path, server, tiny):
    body, md5, url = tiny
    server.ranges = False
    dest = tmp_path / "beir"
    dest.mkdir()
    (dest / "tiny.zip.part").write_bytes(b"stale bytes from another file")
    download_beir("tiny", dest, url, md5, progress=False)
    assert listing(dest) == ["tiny"]


def test_complete_part_file_is_checked_not_refetched(tmp_path, server, tiny):
    body, md5, url = tiny
    dest = tmp_path / "beir"
    dest.mkdir()
    (dest / "tiny.zip.part").write_bytes(body)
    download_beir("tiny", dest, url, md5, progress=False)  # the server answers 416: the part is already whole
    assert listing(dest) == ["tiny"]


def test_connection_drop_keeps_part_then_resumes(tmp_path, server, tiny):
    body, md5, url = tiny
    server.cut["/tiny.zip"] = 1500
    dest = tmp_path / "beir"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_beir("tiny", dest, url, md5, progress=False)
    assert listing(dest) == ["tiny.zip.part"] and (dest / "tiny.zip.part").read_bytes() == body[:1500]
    download_beir("tiny", dest, url, md5, progress=False)
    assert server.requests[-1] == ("/tiny.zip", "bytes=1500-")
    assert listing(dest) == ["tiny"]


def test_invalid_beir_content_leaves_no_folder(tmp_path, server):
    server.files["/graded.zip"] = beir_zip(tmp_path, "graded", score="0.5")
    dest = tmp_path / "beir"
    with pytest.raises(DownloadError, match=r"not valid BEIR format: .*test.tsv, line 2: score '0.5' is not an integer"):
        download_beir("graded", dest, server.url + "/graded.zip", progress=False)
    assert not (dest / "graded").exists()
    assert listing(dest) == ["graded.zip.part"]  # kept for inspection; no temporary folder left


def test_zip_without_top_folder_and_unsafe_paths(tmp_path, server):
    server.files["/flat.zip"] = beir_zip(tmp_path, "flat", top="")
    assert download_beir("flat", tmp_path / "beir", server.url + "/flat.zip", progress=False) == tmp_path / "beir" / "flat"
    assert load_beir(tmp_path / "beir" / "flat", "test")[2] == {"q1": {"d1": 1}}
    server.files["/evil.zip"] = beir_zip(tmp_path, "evil", top="../evil")
    with pytest.raises(DownloadError, match="unsafe member paths"):
        download_beir("evil", tmp_path / "beir", server.url + "/evil.zip", progress=False)
    assert listing(tmp_path / "beir") == ["flat"] and not (tmp_path / "evil").exists()


def test_existing_invalid_copy_is_left_alone(tmp_path, tiny):
    _, md5, url = tiny
    (tmp_path / "beir" / "tiny").mkdir(parents=True)
    (tmp_path / "beir" / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="exists but is not a valid BEIR folder"):
        download_beir("tiny", tmp_path / "beir", url, md5, progress=False)
    assert listing(tmp_path / "beir" / "tiny") == ["notes.txt"]


def test_bad_name_and_md5_refused(tmp_path, tiny):
    with pytest.raises(DownloadError, match="dataset name"):
        download_beir("../x", tmp_path, tiny[2], progress=False)
    with pytest.raises(DownloadError, match="32 hexadecimal"):
        download_beir("tiny", tmp_path, tiny[2], "abc", progress=False)


def test_module_entry_point_exits_nonzero(tmp_path, server):
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "causalneg.data",
            "download",
            "missing",
            str(tmp_path / "beir"),
            "--url",
            server.url + "/missing.zip",
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "HTTP error 404" in r.stderr and server.url + "/missing.zip" in r.stderr, r.stderr


def test_stale_unpacking_folder_from_a_killed_run_is_removed(tmp_path, tiny):
    _, md5, url = tiny
    stale = tmp_path / "beir" / ".tiny.abc123.unpacking" / "tiny"
    stale.mkdir(parents=True)
    (stale / "corpus.jsonl").write_text("half")
    download_beir("tiny", tmp_path / "beir", url, md5, progress=False)
    assert listing(tmp_path / "beir") == ["tiny"]
