"""S3 copies with boto3: one put with the content's SHA-256 for the store to check, conditional
(If-None-Match) when an existing object is to be kept (docs/design.md#remote-destinations).

boto3 is AWS's own SDK, and every S3-compatible store (MinIO, Ceph, Garage, moto's server in the
tests) speaks its protocol. A put is atomic: an object appears whole or not at all, so S3 needs no
temporary name. Credentials come from AWS's chain (environment, profile, instance role); a
``[[remote]]`` table gives an endpoint and region for a store that is not AWS.
"""

from __future__ import annotations

import base64

import boto3
import botocore.config
import botocore.exceptions

from . import Problem
from .urls import Settings, Where

TIMEOUT = 30.0


class Client:
    """A boto3 client with one HTTP connection: the remote's pool holds ``max_connections`` of them."""

    def __init__(self, where: Where, settings: Settings):
        self.where = where
        config = botocore.config.Config(max_pool_connections=1, connect_timeout=TIMEOUT,
                                        read_timeout=TIMEOUT, retries={"mode": "standard", "max_attempts": 2})
        # A session of its own: boto3's default one is not safe to make clients from in several threads.
        self.s3 = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url or None,
                                                 region_name=settings.region or None, config=config)

    def close(self) -> None:
        self.s3.close()

    def put(self, folder: str, name: str, data: bytes, sha256: str, replace: bool) -> bool:
        key = _key(folder, name)
        extra = {} if replace else {"IfNoneMatch": "*"}
        try:
            self.s3.put_object(Bucket=self.where.host, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                               ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(), **extra)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise Problem(f"{self.where.label}/{key}: {_reason(e)}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise Problem(f"{self.where.label}/{key}: {_reason(e)}") from None
        return True

    def holds(self, folder: str, name: str, sha256: str) -> bool:
        """Whether the object is this content, by the SHA-256 the store keeps with it (every put
        sends one)."""
        try:
            head = self.s3.head_object(Bucket=self.where.host, Key=_key(folder, name), ChecksumMode="ENABLED")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, OSError):
            return False
        return head.get("ChecksumSHA256") == base64.b64encode(bytes.fromhex(sha256)).decode()

    def clean(self, folder: str, name: str) -> int:
        return 0        # a put leaves nothing behind when it is cut short


def _key(folder: str, name: str) -> str:
    return f"{folder.strip('/')}/{name}" if folder.strip("/") else name


def _reason(e: Exception) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        error = e.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(e, botocore.exceptions.EndpointConnectionError):
        return f"unreachable: {e}"
    if isinstance(e, botocore.exceptions.NoCredentialsError):
        return "no credentials (AWS's chain found none: AWS_ACCESS_KEY_ID, a profile or a role)"
    return str(e) or type(e).__name__
