"""NATVIEW downloader against a local S3-like server (ListObjectsV2 + Range, cut transfers)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest

from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.natview.download import download_natview, list_objects, safe_extract, select_files

PREFIX = nv.S3_PREFIX
ROOT = PREFIX + "raw_data/"


def _release() -> dict[str, bytes]:
    """A tiny NATVIEW-shaped tree: 2 subjects, 2 sessions, 3 tasks, small random files."""
    rng = np.random.default_rng(0)
    files = {ROOT + "dataset_description.json": b'{"Name": "NATVIEW", "BIDSVersion": "1.8.0"}',
             ROOT + "participants.tsv": b"participant_id\nsub-01\nsub-02\n"}  # fmt: skip
    for sub in ("01", "02"):
        for ses in ("01", "02"):
            stem = f"sub-{sub}/ses-{ses}/"
            files[ROOT + stem + f"anat/sub-{sub}_ses-{ses}_T1w.nii.gz"] = rng.bytes(3000)
            files[ROOT + stem + f"eeg/sub-{sub}_ses-{ses}_electrodes.tsv"] = b"name\tx\n"
            for task in ("checker", "rest", "tp_run-01"):
                name = f"sub-{sub}_ses-{ses}_task-{task}"
                files[ROOT + stem + f"eeg/{name}_eeg.set"] = rng.bytes(200_000)
                files[ROOT + stem + f"func/{name}_bold.nii.gz"] = rng.bytes(50_000)
    return files


class _S3:
    """State of the fake bucket: objects, multipart ETags, the transfers to cut once."""

    def __init__(self, objects: dict[str, bytes], cut: set[str], max_keys: int = 7):
        self.objects = objects
        self.cut = set(cut)
        self.max_keys = max_keys
        self.ranges: list[tuple[str, str]] = []
        self.gets: list[str] = []
        self.lock = threading.Lock()

    def etag(self, key: str) -> str:
        return hashlib.md5(self.objects[key]).hexdigest()


def _handler(state: _S3):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server API
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/" and query.get("list-type") == "2":
                return self._list(query)
            key = urllib.parse.unquote(url.path.lstrip("/"))
            if key not in state.objects:
                return self._send(404, b"NoSuchKey")
            body = state.objects[key]
            start, status = 0, 200
            header = self.headers.get("Range")
            if header:
                start = int(header.split("=")[1].split("-")[0])
                status = 206
                with state.lock:
                    state.ranges.append((key, header))
            with state.lock:
                state.gets.append(key)
                cut = key in state.cut
                state.cut.discard(key)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", f'"{state.etag(key)}"')
            self.end_headers()
            if cut:  # send 40 % then drop the connection
                self.wfile.write(body[start : start + int(0.4 * len(body))])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body[start:])

        def _list(self, query):
            prefix = query.get("prefix", "")
            keys = sorted(k for k in state.objects if k.startswith(prefix))
            start = int(query.get("continuation-token", "0"))
            page = keys[start : start + state.max_keys]
            more = start + state.max_keys < len(keys)
            items = "".join(
                f"<Contents><Key>{escape(k)}</Key><Size>{len(state.objects[k])}</Size>"
                f"<ETag>&quot;{state.etag(k)}&quot;</ETag></Contents>"
                for k in page
            )
            token = f"<NextContinuationToken>{start + state.max_keys}</NextContinuationToken>"
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>fcp-indi</Name><Prefix>{escape(prefix)}</Prefix>"
                f"<KeyCount>{len(page)}</KeyCount><IsTruncated>{str(more).lower()}"
                f"</IsTruncated>{token if more else ''}{items}</ListBucketResult>"
            )
            self._send(200, xml.encode())

        def _send(self, status: int, body: bytes):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def bucket():
    """A threaded local S3 look-alike serving :func:`_release`; yields (url, state)."""
    cut_key = ROOT + "sub-01/ses-01/eeg/sub-01_ses-01_task-checker_eeg.set"
    state = _S3(_release(), cut={cut_key})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_listing_follows_pagination(bucket):
    url, state = bucket
    files = list_objects(url, ROOT)
    assert len(files) == len(state.objects) > 3 * state.max_keys
    assert {f.key for f in files} == set(state.objects)
    assert all(f.md5 == state.etag(f.key) for f in files)


def test_subset_resume_and_skip(bucket, tmp_path):
    url, state = bucket
    report = download_natview(tmp_path, subjects=["01"], sessions=["01"], tasks=["checker"],
                              base_url=url, jobs=3, backoff_s=0.01)  # fmt: skip
    got = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert got == sorted([
        "dataset_description.json", "participants.tsv",
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
        "sub-01/ses-01/eeg/sub-01_ses-01_electrodes.tsv",
        "sub-01/ses-01/eeg/sub-01_ses-01_task-checker_eeg.set",
        "sub-01/ses-01/func/sub-01_ses-01_task-checker_bold.nii.gz",
    ])  # fmt: skip
    cut = "sub-01/ses-01/eeg/sub-01_ses-01_task-checker_eeg.set"
    assert report.ok and report.resumed == [cut]
    ranges = [r for k, r in state.ranges if k.endswith(cut)]
    assert ranges == [f"bytes={int(0.4 * 200_000)}-"]  # resumed exactly where it was cut
    assert (tmp_path / cut).read_bytes() == state.objects[ROOT + cut]
    assert not list(tmp_path.rglob("*.part"))
    n_gets = len(state.gets)
    again = download_natview(tmp_path, subjects=["sub-01"], sessions=["01"], tasks=["checker"],
                             base_url=url)  # fmt: skip
    assert again.skipped == sorted(report.downloaded) and not again.downloaded
    assert len(state.gets) == n_gets  # nothing fetched again
    # a corrupted local copy (same size, other bytes) is detected by MD5 and replaced
    (tmp_path / cut).write_bytes(bytes(200_000))
    fixed = download_natview(tmp_path, subjects=["01"], sessions=["01"], tasks=["checker"],
                             base_url=url)  # fmt: skip
    assert fixed.downloaded == [cut] and (tmp_path / cut).read_bytes() == state.objects[ROOT + cut]


def test_select_files_by_task_and_session():
    from bids_app.natview.download import RemoteFile

    files = [RemoteFile(k, len(v)) for k, v in _release().items()]
    rest = select_files(files, ROOT, tasks=["rest"])
    names = [rel for _, rel in rest]
    assert sum("_task-rest_" in n for n in names) == 8  # 2 subjects x 2 sessions x (eeg, bold)
    assert not any("_task-tp" in n or "_task-checker" in n for n in names)
    ses2 = [rel for _, rel in select_files(files, ROOT, subjects=["02"], sessions=["ses-02"])]
    assert all(n.startswith("sub-02/ses-02/") for n in ses2 if n.startswith("sub-"))


def test_offline_is_one_clear_sentence(tmp_path):
    with pytest.raises(InputError, match=r"Cannot reach http://127\.0\.0\.1:9 .*internet"):
        download_natview(tmp_path, base_url="http://127.0.0.1:9", retries=0)


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


@pytest.mark.parametrize("bad", ["../evil.txt", "/tmp/evil.txt", "sub-01/../../evil.txt",
                                 "link", "dev"])  # fmt: skip
def test_tar_escape_refused(tmp_path, bad):
    if bad == "link":
        member = tarfile.TarInfo("sub-01/link")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif bad == "dev":
        member = tarfile.TarInfo("sub-01/dev")
        member.type = tarfile.CHRTYPE
    else:
        member = _file(bad)
    archive = tmp_path / "sub-01.tar.gz"
    archive.write_bytes(_tar([_file("sub-01/ok.txt"), member]))
    with pytest.raises(InputError, match="sub-01.tar.gz"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "sub-01").exists()


def test_tarball_kind_and_stimuli(bucket, tmp_path):
    url, state = bucket
    gz = PREFIX + "raw_data_gz/"
    state.objects[gz + "sub-01.tar.gz"] = _tar(
        [_file("sub-01/ses-01/eeg/sub-01_ses-01_task-rest_eeg.set", b"rest"),
         _file("sub-01/ses-01/eeg/sub-01_ses-01_task-tp_run-01_eeg.set", b"tp")], b"rest"
    )  # fmt: skip
    state.objects[gz + "sub-02.tar.gz"] = _tar([_file("sub-02/x.txt")])
    state.objects[gz + "base_folder.tar.gz"] = _tar([_file("participants.tsv")])
    state.objects["video.tar.gz"] = _tar([_file("The_Present_720x480.avi", b"avi")], b"avi")
    report = download_natview(tmp_path, subjects=["01"], tasks=["rest"], kind="raw_gz",
                              base_url=url, with_stimuli=True,
                              stimuli_url=f"{url}/video.tar.gz")  # fmt: skip
    assert report.ok and sorted(report.downloaded) == ["base_folder.tar.gz", "sub-01.tar.gz"]
    assert (tmp_path / "sub-01/ses-01/eeg/sub-01_ses-01_task-rest_eeg.set").is_file()
    assert not (tmp_path / "sub-01/ses-01/eeg/sub-01_ses-01_task-tp_run-01_eeg.set").exists()
    assert not (tmp_path / "sub-02").exists() and (tmp_path / "participants.tsv").is_file()
    assert (tmp_path / "stimuli" / "The_Present_720x480.avi").read_bytes() == b"avi"
    with pytest.raises(InputError, match="Unknown release kind"):
        download_natview(tmp_path, kind="zip", base_url=url)


def test_missing_subject_is_reported(bucket, tmp_path):
    url, _ = bucket
    with pytest.raises(InputError, match="No file"):
        download_natview(Path(tmp_path), subjects=["99"], base_url=url, kind="raw_gz")
