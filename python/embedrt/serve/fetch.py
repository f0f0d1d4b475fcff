"""Model and plan URIs to local paths.

A replica (or a Ray Data actor) is told where its artifact lives; it
fetches it once into a cache directory before opening the Engine:

- a local path or `file://...`: used in place;
- `http://` / `https://`: one file (a plan, or a model directory packed as
  `.tar.gz` / `.tgz`, unpacked);
- `s3://bucket/key` (one object) or `s3://bucket/prefix/` (every object under
  it, for a model directory), through boto3 and its usual credential chain
  (IRSA / EKS Pod Identity on EKS).

Downloads land in a temporary name and are renamed into place, so a replica
killed mid-download never leaves a half file that the next one would trust.
Anything else (a Hugging Face id) is passed through for the Engine to resolve.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request

_TARBALL = (".tar.gz", ".tgz")


def fetch(uri: str, cache_dir: str) -> str:
    """A local path holding what `uri` names (downloaded into `cache_dir` when remote)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme in ("http", "https"):
        return _cached(uri, cache_dir, lambda tmp: _download_http(uri, tmp))
    if parsed.scheme == "s3":
        return _cached(
            uri,
            cache_dir,
            lambda tmp: _download_s3(parsed.netloc, parsed.path.lstrip("/"), tmp),
        )
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(
            f"{uri}: unsupported URI scheme {parsed.scheme!r} (use a path, file://, http(s):// or s3://)"
        )
    return uri


def _cached(uri: str, cache_dir: str, download) -> str:
    name = os.path.basename(urllib.parse.urlparse(uri).path.rstrip("/")) or "artifact"
    for suffix in _TARBALL:
        name = name.removesuffix(suffix)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    final = os.path.join(cache_dir, key, name)
    if os.path.exists(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(final))
    try:
        produced = download(os.path.join(staging, name))
        if produced.endswith(_TARBALL):
            unpacked = os.path.join(staging, name + ".d")
            with tarfile.open(produced) as tar:
                tar.extractall(unpacked, filter="data")
            produced = _single_root(unpacked)
        try:
            os.rename(produced, final)
        except OSError:
            if not os.path.exists(final):  # another process won the race otherwise
                raise
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _single_root(directory: str) -> str:
    """A tarball holding one top-level directory unpacks to that directory."""
    entries = os.listdir(directory)
    if len(entries) == 1 and os.path.isdir(os.path.join(directory, entries[0])):
        return os.path.join(directory, entries[0])
    return directory


def _download_http(uri: str, dest: str) -> str:
    path = urllib.parse.urlparse(uri).path
    if path.endswith(_TARBALL):
        dest += ".tar.gz"
    try:
        with urllib.request.urlopen(uri, timeout=60) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except OSError as e:
        raise RuntimeError(f"{uri}: download failed: {e}") from e
    return dest


def _download_s3(bucket: str, key: str, dest: str) -> str:
    try:
        import boto3
    except ImportError:
        raise RuntimeError(
            f"s3://{bucket}/{key}: boto3 is not installed (pip install boto3)"
        ) from None
    s3 = boto3.client("s3")
    if key.endswith("/") or not key:
        os.makedirs(dest)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        found = False
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(key) :]
                if not rel or rel.endswith("/"):
                    continue
                target = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                s3.download_file(bucket, obj["Key"], target)
                found = True
        if not found:
            raise RuntimeError(f"s3://{bucket}/{key}: no objects under this prefix")
        return dest
    if key.endswith(_TARBALL):
        dest += ".tar.gz"
    s3.download_file(bucket, key, dest)
    return dest
