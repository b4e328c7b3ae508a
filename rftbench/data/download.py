"""Download mechanics: one verified file over HTTP with resume, its digest, and unpacking an archive.

    file, sha256 = download(Resource(url, "CUB_200_2011.tgz", (sha,)), Path("data/.downloads"), Progress())
    unpack(file, Path("data/.cub.partial-1234"))

- A download streams into `<folder>/<file>.part`; a broken connection is retried, and a later run resumes
  it with an HTTP Range request. The file gets its final name only once its size and checksum match; a
  wrong checksum deletes it and says so.
- Archives unpack with `shutil.unpack_archive` (tar's "data" filter: no absolute paths, no links leaving
  the folder; shutil's zip unpacker skips such members itself).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from rftbench.errors import RftbenchError

USER_AGENT = "rftbench-data-fetch (+https://github.com; python urllib)"
CHUNK = 1 << 20
RETRIES, BACKOFF = 3, 2.0  # a broken connection is retried after 2, 4, 8 s


class FetchError(RftbenchError, RuntimeError):
    """A download or an archive that cannot be used; one line naming the file and what to do."""


@dataclass(frozen=True)
class Resource:
    url: str
    filename: str
    sha256: tuple[str, ...] = ()  # accepted digests; empty: no published checksum (see `checked_by`)
    size: int | None = None  # bytes, where known (one digest only)
    unpack: bool = True  # an archive to unpack, else a file to copy
    into: str = ""  # where, inside the dataset's root
    checked_by: str = ""  # the source of the checksum, or how the content is checked without one


class Progress:
    """What a fetch reports; the CLI draws rich progress bars, tests may record it."""

    def start(self, label: str, total: int | None, completed: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def note(self, text: str) -> None: ...


class IncompleteDownload(Exception):
    pass


def digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download(resource: Resource, folder: Path, progress: Progress, retries: int | None = None,
             backoff: float | None = None) -> tuple[Path, str]:  # fmt: skip
    """`resource` as a verified file in `folder` (reused when an earlier run finished it), and its sha256.
    A broken connection is retried from where it stopped; a run that still fails leaves the `.part` file
    for the next one. Two fetches sharing the folder take turns per file."""
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF if backoff is None else backoff
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / resource.filename, folder / f"{resource.filename}.part"
    with FileLock(f"{part}.lock"):
        if final.exists():
            got = digest(final)
            if not resource.sha256 or got in resource.sha256:
                progress.note(f"{resource.filename}: already downloaded and verified")
                return final, got
            final.unlink()
        for attempt in range(retries + 1):
            try:
                _stream(resource, part, progress)
                break
            except FetchError:
                raise
            except (OSError, http.client.HTTPException, IncompleteDownload) as exc:
                have = part.stat().st_size if part.exists() else 0
                if _hopeless(exc):
                    raise FetchError(
                        f"{resource.url}: {_reason(exc)}; retrying cannot help: check the network (proxy, "
                        f"DNS, certificates) or the disk, then run the same command again"
                    ) from None
                if attempt == retries:
                    raise FetchError(
                        f"{resource.url}: the download broke off ({_reason(exc)}) with {have:,} bytes in "
                        f"{part}; run the same command again to resume it"
                    ) from None
                progress.note(
                    f"{resource.filename}: {_reason(exc)}; resuming (try {attempt + 2} of {retries + 1})"
                )
                time.sleep(backoff * 2**attempt)
        got = digest(part)
        if resource.sha256 and got not in resource.sha256:
            part.unlink()
            raise FetchError(
                f"{resource.filename} from {resource.url} has sha256 {got}, expected "
                f"{' or '.join(resource.sha256)} ({resource.checked_by}); the download was deleted: run "
                f"again, and if it repeats, the source changed the file (report it)"
            )
        os.replace(part, final)
    return final, got


def _cause(exc: BaseException) -> BaseException:
    if isinstance(exc, urllib.error.URLError) and isinstance(getattr(exc, "reason", None), BaseException):
        return exc.reason
    return exc


def _hopeless(exc: BaseException) -> bool:
    """Errors a retry cannot fix: certificates, names that do not resolve, a full or read-only disk."""
    cause = _cause(exc)
    disk = getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
    return isinstance(cause, ssl.SSLCertVerificationError | socket.gaierror) or disk


def _reason(exc: BaseException) -> str:
    cause = exc if isinstance(exc, urllib.error.HTTPError) else _cause(exc)
    return str(cause).strip() or type(cause).__name__


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header: "bytes 100-999/1000", "bytes */1000"."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _stream(resource: Resource, part: Path, progress: Progress) -> None:
    have = part.stat().st_size if part.exists() else 0
    if resource.size is not None and have > resource.size:  # not a prefix of this file
        have = 0
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(urllib.request.Request(resource.url, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            if _content_range(exc.headers.get("Content-Range"))[1] == have:
                return  # the .part already holds the whole file
            part.unlink()
            raise IncompleteDownload(
                "the partial download is not a prefix of the file: starting again"
            ) from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise  # the server is busy or failing: retried
        raise FetchError(
            f"{resource.url}: the server answered HTTP {exc.code} ({exc.reason}); the source may have "
            f"moved: `rftbench/data/sources.py` says where each file comes from"
        ) from None
    with response:
        if have and (
            response.status != 206 or _content_range(response.headers.get("Content-Range"))[0] != have
        ):
            have = 0  # the server ignored or misread the range: start again
        try:
            total = have + int(response.headers.get("Content-Length"))
        except (TypeError, ValueError):
            total = None
        progress.start(resource.filename, total, have)
        written = have
        with open(part, "ab" if have else "wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                written += len(chunk)
                progress.advance(len(chunk))
    if total is not None and written < total:
        raise IncompleteDownload(f"connection closed at {written:,} of {total:,} bytes")


def unpack(archive: Path, into: Path) -> None:
    """Unpack a zip or a (compressed) tar, by its name (module docstring: what is refused)."""
    into.mkdir(parents=True, exist_ok=True)
    tar_filter = None if archive.suffix == ".zip" else "data"  # shutil's zip unpacker takes no filter (3.11)
    try:
        shutil.unpack_archive(archive, into, filter=tar_filter)
    except (shutil.ReadError, tarfile.TarError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise FetchError(f"{archive} cannot be unpacked ({exc}); delete it and fetch again") from None
    except OSError as exc:
        raise FetchError(
            f"unpacking {archive.name} into {into.parent} failed: {exc.strerror or exc}"
        ) from None
