"""Run stores on fsspec URLs (``s3://bucket/root``, ``gs://...``, ``memory://...``): the same folders as on disk,
written locally and published, read through a local copy.

**Writing** (:func:`publish_run`). A run is recorded into a local staging folder exactly as on disk (the lock,
the atomic manifest, the fast chunk writer), then uploaded: first the old run's manifest is deleted (so the old
completion marker can never describe new data), then every other object, then ``manifest.json`` **last**. An
object store has no rename and no lock, so the manifest is the completion marker: a run whose upload stopped part way
has no manifest, or one whose ``status`` is not ``complete``, and is never read as complete. Two writers publishing
the same run at once are not excluded (the sweep's cells never share a run folder).

**Reading** (:func:`fetch_run`). ``open_run(URL)`` downloads the run into the cache
(``$ATTNLENS_HOME/remote/<hash of the URL>``) and opens the copy: zarr, the fast chunk reader and the images work
unchanged. The copy is refreshed when the remote manifest differs from the cached one. ``ls`` and ``info`` read
only the manifest (:func:`read_remote_manifest`); :func:`mirror_root` copies a whole root (the dashboard's index).

**Small JSON objects** (:func:`read_json_object`, :func:`write_json_object`): a sweep's ``sweep.json`` is written
as one PUT of the whole object, so a reader sees the old object or the new one, never part of one.
:func:`read_run_manifests` reads many runs' manifests in one batch of concurrent requests (a sweep's reuse check
and its status).

Credentials and endpoints come from the usual places of the file system's library (for S3: the AWS environment
variables and files; ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO or moto).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..errors import RunNotFound, StoreError
from .layout import LOCK, MANIFEST

#: local files of a run that are never uploaded (the lock and the write probe mean nothing elsewhere)
_LOCAL_ONLY = {LOCK, ".attnlens-write-test"}


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path, a ``Path`` or ``file://`` is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://") and isinstance(path, str)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path inside it) of ``url``; a one-line error when its library is not installed."""
    try:
        import fsspec
    except ModuleNotFoundError:
        raise StoreError("reading or writing URLs needs fsspec", hint="pip install fsspec (and s3fs for s3://)") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
        fs.invalidate_cache()  # other processes write the store: never answer from an old listing
        return fs, path
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        extra = {"s3": "s3fs", "gs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme, f"the fsspec package for {scheme}")
        raise StoreError(f"cannot open '{url}': {str(exc).splitlines()[0]}",
                         hint=f"pip install {extra} (pip install 'attnlens[s3]' for s3://)") from None


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def read_remote_manifest(url: str) -> dict[str, Any]:
    """The manifest of the run at ``url``; RunNotFound when there is none (no run, or one still uploading)."""
    fs, path = filesystem(url)
    try:
        raw = fs.cat_file(join(path, MANIFEST))
    except FileNotFoundError:
        raise RunNotFound(f"'{url}' is not an attnlens run (no {MANIFEST})", hint="run 'attnlens ls ROOT' to list runs") from None
    except OSError as exc:
        raise StoreError(f"cannot read '{url}': {exc}", hint="check the URL and your credentials") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"'{url}/{MANIFEST}' is corrupted ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise StoreError(f"'{url}/{MANIFEST}' is not a JSON object", hint="the run is damaged; record it again")
    return data


def remote_is_run(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(join(path, MANIFEST))


def find_run_urls(root: str) -> Iterator[str]:
    """Every run under the URL ``root`` (``root`` itself if it is a run), sorted: the prefixes holding a manifest."""
    fs, path = filesystem(root)
    if fs.exists(join(path, MANIFEST)):
        yield root.rstrip("/")
        return
    if not fs.exists(path):
        raise RunNotFound(f"'{root}' does not exist", hint="check the URL (attnlens ls s3://bucket/root)")
    base = path.rstrip("/")
    found = sorted(p for p in fs.find(base) if posixpath.basename(p) == MANIFEST)
    for p in found:
        rel = posixpath.relpath(posixpath.dirname(p), base)
        yield join(root, rel) if rel != "." else root.rstrip("/")


def cache_root() -> Path:
    """Where remote runs are copied: ``$ATTNLENS_HOME/remote`` (``~/.cache/attnlens/remote``)."""
    return Path(os.environ.get("ATTNLENS_HOME", Path.home() / ".cache" / "attnlens")).expanduser() / "remote"


def cache_path(url: str) -> Path:
    """The local copy's folder of the run or root at ``url``."""
    url = url.rstrip("/")
    name = url.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def fetch_run(url: str, target: Path | None = None) -> Path:
    """Copy the run at ``url`` into ``target`` (default :func:`cache_path`) unless the copy there already has the
    remote manifest, and return the local folder. The manifest is read first and written last, so the copy is
    complete exactly when its manifest says so."""
    manifest = read_remote_manifest(url)
    target = Path(target) if target is not None else cache_path(url)
    local = target / MANIFEST
    if local.is_file():
        try:
            if json.loads(local.read_text()) == manifest:
                return target
        except ValueError:
            pass
    fs, path = filesystem(url)
    tmp = target.with_name(f".{target.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in fs.find(path):
            rel = posixpath.relpath(f, path.rstrip("/"))
            if rel == MANIFEST:
                continue
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(dest))
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def mirror_root(root: str, target: Path | None = None) -> Path:
    """A local copy of every run under the URL ``root`` (same relative paths), refreshed run by run."""
    target = Path(target) if target is not None else cache_path(root)
    base = root.rstrip("/")
    for url in find_run_urls(root):
        rel = url[len(base):].lstrip("/")
        fetch_run(url, target / rel if rel else target)
    return target


def publish_run(local: str | Path, url: str) -> str:
    """Upload the run folder ``local`` to ``url``: the old manifest is deleted first, then the old objects, then
    every file but the manifest, and ``manifest.json`` last (the completion marker; see the module)."""
    local = Path(local)
    if not (local / MANIFEST).is_file():
        raise RunNotFound(f"'{local}' is not a run (no {MANIFEST})")
    fs, path = filesystem(url)
    path = path.rstrip("/")
    try:
        if fs.exists(join(path, MANIFEST)):
            fs.rm_file(join(path, MANIFEST))  # from here on, nothing at url reads as a run
        if fs.exists(path):
            fs.rm(path, recursive=True)
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = f.relative_to(local).as_posix()
            if rel == MANIFEST or rel.split("/", 1)[0] in _LOCAL_ONLY:
                continue
            fs.put_file(str(f), join(path, rel))
        fs.put_file(str(local / MANIFEST), join(path, MANIFEST))
    except Exception as exc:  # noqa: BLE001  (botocore and aiohttp errors are not OSErrors)
        raise io_error(url, exc) from None
    return url.rstrip("/")


def io_error(url: str, exc: BaseException, verb: str = "write") -> StoreError:
    """A one-line StoreError for a failed request to ``url`` (a missing bucket, an endpoint that does not answer,
    refused credentials: the file system's libraries raise their own exception types)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreError(f"cannot {verb} '{url}': {text}",
                      hint="check the URL, that the bucket exists, the endpoint (AWS_ENDPOINT_URL for an "
                           "S3-compatible server) and your credentials")


def read_json_object(url: str) -> dict[str, Any] | None:
    """The JSON object stored at ``url``, or None when there is none; StoreError when it cannot be read or is not
    a JSON object."""
    fs, path = filesystem(url)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001  (botocore and aiohttp errors are not OSErrors)
        raise io_error(url, exc, "read") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"'{url}' is damaged ({type(exc).__name__})", hint="rerun the sweep: it rewrites it") from None
    if not isinstance(data, dict):
        raise StoreError(f"'{url}' is not a JSON object", hint="rerun the sweep: it rewrites it")
    return data


def write_json_object(url: str, data: dict[str, Any]) -> None:
    """Store ``data`` as JSON at ``url`` in one PUT of the whole object (``pipe_file``; a small object is never
    uploaded in parts), so a reader, or a crash of this process, never leaves a truncated object."""
    fs, path = filesystem(url)
    body = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    try:
        fs.pipe_file(path, body)
    except Exception as exc:  # noqa: BLE001  (botocore and aiohttp errors are not OSErrors)
        raise io_error(url, exc) from None


def read_run_manifests(urls: list[str]) -> dict[str, dict[str, Any] | None]:
    """The manifest of each run URL in ``urls`` (None where there is none or it is not a JSON object), read in
    one batch of concurrent requests. All URLs must be on one file system."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = {filesystem(u)[1].rstrip("/") + "/" + MANIFEST: u for u in urls}
    try:
        got = fs.cat(list(paths), on_error="return")
    except Exception as exc:  # noqa: BLE001  (botocore and aiohttp errors are not OSErrors)
        raise io_error(urls[0], exc, "read") from None
    out: dict[str, dict[str, Any] | None] = {}
    for path, url in paths.items():
        raw = got.get(path)
        if isinstance(raw, FileNotFoundError) or raw is None:
            out[url] = None
        elif isinstance(raw, BaseException):
            raise io_error(url, raw, "read")
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                data = None
            out[url] = data if isinstance(data, dict) else None
    return out


__all__ = ["cache_path", "cache_root", "fetch_run", "filesystem", "find_run_urls", "io_error", "is_url", "join",
           "mirror_root", "publish_run", "read_json_object", "read_remote_manifest", "read_run_manifests",
           "remote_is_run", "write_json_object"]
