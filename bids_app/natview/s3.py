"""HTTP access to the public S3 bucket of the NATVIEW release: listing and resumable fetch.

:func:`list_objects` pages through the ListObjectsV2 API without credentials; :func:`fetch`
downloads one object with HTTP ``Range`` resume (``<file>.part``, renamed once its size and
MD5 are verified) and exponential backoff on transient errors.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bids_app.errors import InputError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


_MD5 = re.compile(r"^[0-9a-f]{32}$")


_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
              TimeoutError)  # fmt: skip


@dataclass(frozen=True)
class RemoteFile:
    """One object of the bucket.

    Attributes
    ----------
    key : str
        Full S3 key.
    size : int
        Size in bytes.
    etag : str
        ETag without quotes (the MD5 of the content unless it contains ``-``).
    """

    key: str
    size: int
    etag: str = ""

    @property
    def md5(self) -> str | None:
        """MD5 hex digest when the ETag is a plain MD5 (single-part upload)."""
        return self.etag if _MD5.match(self.etag) else None


# --- listing and selection ----------------------------------------------------------------
def _open(url: str, *, headers: dict | None = None, timeout: float = 60.0):
    request = urllib.request.Request(url, headers={"User-Agent": "eegfmri", **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only


def list_objects(base_url: str, prefix: str, *, timeout: float = 60.0) -> list[RemoteFile]:
    """List every object under ``prefix`` with S3 ListObjectsV2, following pagination.

    Parameters
    ----------
    base_url : str
        Bucket endpoint (``https://fcp-indi.s3.amazonaws.com``).
    prefix : str
        Key prefix.
    timeout : float
        Seconds per request.

    Returns
    -------
    list of RemoteFile
        Objects in key order (folders, keys ending in ``/``, are left out).

    Raises
    ------
    InputError
        When the bucket cannot be reached or answers something else than a listing.
    """
    files: list[RemoteFile] = []
    token = None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = f"{base_url.rstrip('/')}/?{urllib.parse.urlencode(query)}"
        try:
            with _open(url, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            raise InputError(f"Listing {url} failed with HTTP {err.code} {err.reason}.") from None
        except _TRANSIENT as err:
            reason = getattr(err, "reason", err)
            raise InputError(
                f"Cannot reach {base_url} ({reason}); check the internet connection "
                "(the NATVIEW download needs access to the public S3 bucket)."
            ) from None
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise InputError(f"{url} did not answer with an S3 listing (not XML).") from None
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        for item in root.iter(f"{ns}Contents"):
            key = item.findtext(f"{ns}Key") or ""
            if key and not key.endswith("/"):
                size = int(item.findtext(f"{ns}Size") or 0)
                etag = (item.findtext(f"{ns}ETag") or "").strip('"')
                files.append(RemoteFile(key, size, etag))
        truncated = (root.findtext(f"{ns}IsTruncated") or "false").lower() == "true"
        token = root.findtext(f"{ns}NextContinuationToken")
        if not truncated or not token:
            return files


# --- transfer -----------------------------------------------------------------------------
def _md5_of(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - integrity check against S3 ETags, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(path: Path, remote: RemoteFile) -> bool:
    """Whether ``path`` already holds ``remote`` (size, and MD5 when the ETag is one)."""
    if not path.is_file() or path.stat().st_size != remote.size:
        return False
    return remote.md5 is None or _md5_of(path) == remote.md5


def fetch(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout: float = 60.0,
    progress=None,
) -> bool:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming and verifying it.

    Parameters
    ----------
    url : str
        Source.
    dest : Path
        Final path (written only once the content is verified).
    size : int | None
        Expected size in bytes (None: trust Content-Length).
    md5 : str | None
        Expected MD5 hex digest.
    retries : int
        Attempts after the first one; waits ``backoff_s * 2**k`` before attempt ``k + 1``.
    backoff_s : float
        Base of the exponential backoff (s).
    timeout : float
        Seconds per request.
    progress : callable | None
        Called with the number of bytes received.

    Returns
    -------
    bool
        True when the transfer resumed a partial file at least once.

    Raises
    ------
    OSError
        When every attempt failed (message names the URL).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = False
    last_error = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        try:
            if size is None or have < size:
                headers = {"Range": f"bytes={have}-"} if have else {}
                with _open(url, headers=headers, timeout=timeout) as response:
                    if have and response.status != 206:  # server ignored the range
                        have = 0
                    resumed |= bool(have)
                    if size is None:
                        length = response.headers.get("Content-Length")
                        size = have + int(length) if length is not None else None
                    with open(part, "ab" if have else "wb") as out:
                        while block := response.read(_CHUNK):
                            out.write(block)
                            if progress is not None:
                                progress(len(block))
        except urllib.error.HTTPError as err:
            if err.code == 416 and size is not None and have == size:
                pass  # already complete
            elif err.code < 500 and err.code not in (408, 429):
                raise OSError(f"Download of {url} failed with HTTP {err.code}.") from None
            else:
                last_error = f"HTTP {err.code}"
                continue
        except _TRANSIENT as err:
            last_error = str(getattr(err, "reason", err)) or err.__class__.__name__
            logger.info("Transfer of %s interrupted (%s); retrying.", url, last_error)
            continue
        got = part.stat().st_size if part.exists() else 0
        if size is not None and got < size:
            last_error = f"incomplete ({got} of {size} bytes)"
            continue
        if (size is not None and got != size) or (md5 and _md5_of(part) != md5):
            last_error = "checksum mismatch"
            part.unlink()
            continue
        part.replace(dest)
        return resumed
    raise OSError(f"Download of {url} failed after {retries + 1} attempt(s) ({last_error}).")
