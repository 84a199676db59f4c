"""Remote folders (object storage) for data and checkpoints: what counts as remote, and an early check that an
s3:// folder can be reached with the credentials at hand.

Endpoint and credentials come from the usual environment variables, read by boto3 (and so by streaming and
Composer): S3_ENDPOINT_URL for S3-compatible stores (MinIO, R2, Ceph, ...; unset for AWS S3), AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, an instance role, ...), AWS_DEFAULT_REGION. Without the check, a wrong key
or a missing bucket shows up only at the first download or checkpoint upload, deep inside a worker, after the
setup and possibly hours of training.
"""

from __future__ import annotations

import os
import socket
from typing import Optional
from urllib.parse import urlparse

from mosaicbert.core.config import ConfigError

__all__ = ["is_remote", "check_remote_folder"]


def is_remote(path: Optional[str]) -> bool:
    """True for a URL of an object store or web server (s3://, gs://, oci://, https://...), not a local path."""
    return path is not None and "://" in str(path) and not str(path).startswith(("file://", "builtin://"))


def _s3_client():
    import boto3
    from botocore.config import Config

    # A few seconds per try and two tries: an unreachable endpoint is reported in seconds, not after boto3's
    # default minutes of retries.
    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
                                          config=config)


def check_remote_folder(url: Optional[str], key: str, write: bool = False) -> None:
    """Raise ConfigError naming `key`, the URL and the fix when the s3:// folder `url` cannot be listed (and, with
    `write`, written: a small marker object is put and deleted). Other schemes are left to their libraries."""
    if not is_remote(url) or urlparse(str(url)).scheme != "s3":
        return
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    parsed = urlparse(str(url))
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    endpoint = os.environ.get("S3_ENDPOINT_URL") or "AWS S3"
    where = f"config key '{key}' = {url!r} (endpoint {endpoint}, from S3_ENDPOINT_URL)"
    step = "list"
    try:
        client = _s3_client()
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if write:
            step = "write"
            marker = f"{prefix}/.write-check-{socket.gethostname()}-{os.getpid()}".lstrip("/")
            client.put_object(Bucket=bucket, Key=marker, Body=b"")
            client.delete_object(Bucket=bucket, Key=marker)
    except NoCredentialsError:
        raise ConfigError(f"{where}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                          f"AWS_PROFILE)") from None
    except EndpointConnectionError as e:
        raise ConfigError(f"{where}: cannot reach the endpoint ({e}): check S3_ENDPOINT_URL and the "
                          f"network") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (status == 404 and step == "list"):
            raise ConfigError(f"{where}: bucket {bucket!r} does not exist: create it or fix the URL") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "AuthorizationHeaderMalformed") or status == 401:
            raise ConfigError(f"{where}: the credentials were rejected ({code}): check AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY") from None
        if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == 403:
            raise ConfigError(f"{where}: access denied ({code}) to {step} it: these credentials need "
                              f"{'read and write' if write else 'read'} access to the bucket") from None
        raise ConfigError(f"{where}: {step} failed: {code or status}: {e}") from None
    except (BotoCoreError, ValueError) as e:  # e.g. an invalid endpoint URL, a connection reset
        raise ConfigError(f"{where}: {type(e).__name__}: {e}: check S3_ENDPOINT_URL and the "
                          f"network") from None
