"""s3:// inputs and outputs of the training step.

A Ray job on a cluster (KubeRay on EKS) cannot see the pipeline's disk; when
the registry is on an object store the pipeline passes URIs instead of paths:
``--base s3://.../versions/v0003/model/``, ``--data s3://.../train.jsonl``,
``--out s3://.../runs/RUN/challenger/``. This module turns the inputs into
local files and uploads the trained model, with boto3 and its usual
credential chain (IRSA / EKS Pod Identity on EKS; ``AWS_ENDPOINT_URL`` for
another S3 API).

It lives beside run.py, not in the ``embedrt`` package, because run.py must
run where only torch and sentence-transformers are installed: importing the
package would load the native extension.
"""

from __future__ import annotations

import os
import pathlib
import urllib.parse


def is_uri(text: str) -> bool:
    return text.startswith("s3://")


def _split(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri}: not an s3://BUCKET/KEY URI")
    return parsed.netloc, parsed.path.lstrip("/")


def _client(uri: str):
    try:
        import boto3
    except ImportError:
        raise RuntimeError(
            f"{uri}: boto3 is not installed (pip install boto3)"
        ) from None
    return boto3.client("s3")


def download(uri: str, dest: pathlib.Path) -> pathlib.Path:
    """The object (``s3://b/key``) or every object under a prefix
    (``s3://b/prefix/``, a model directory) at ``dest``."""
    bucket, key = _split(uri)
    s3 = _client(uri)
    if not key.endswith("/"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
        return dest
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(key) :]
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count += 1
    if count == 0:
        raise RuntimeError(f"{uri}: no objects under this prefix")
    return dest


def upload_dir(local: pathlib.Path, uri: str) -> int:
    """Every file under ``local`` to the prefix ``uri``; the number uploaded."""
    bucket, prefix = _split(uri.rstrip("/") + "/")
    s3 = _client(uri)
    count = 0
    for root, _dirs, files in os.walk(local):
        for name in sorted(files):
            path = pathlib.Path(root) / name
            rel = path.relative_to(local).as_posix()
            s3.upload_file(str(path), bucket, prefix + rel)
            count += 1
    return count


def upload_file(local: pathlib.Path, uri: str) -> None:
    bucket, key = _split(uri)
    _client(uri).upload_file(str(local), bucket, key)
