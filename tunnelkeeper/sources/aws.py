"""A token in AWS Secrets Manager (boto3, an optional dependency: ``tunnelkeeper[aws]``).

Polling calls DescribeSecret, which carries no secret material, and follows the version id that
holds the AWSCURRENT stage; GetSecretValue runs only when that id changes. The secret string is
either the bare token or JSON ``{"token": "..."}``. botocore calls run in a worker thread, and
botocore errors are translated here, once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from tunnelkeeper.config.model import AwsSourceConfig
from tunnelkeeper.sources.base import (
    MalformedTokenError,
    TokenSource,
    TokenSourceError,
    TokenVersion,
    parse_token,
)
from tunnelkeeper.tunneltoken import TunnelToken

log = structlog.get_logger(__name__)

CURRENT_STAGE = "AWSCURRENT"
JSON_KEY = "token"
T = TypeVar("T")

_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
}


class AwsSecretsManagerSource(TokenSource):
    is_writable = True

    def __init__(self, cfg: AwsSourceConfig) -> None:
        self.cfg = cfg
        where = f" ({cfg.region})" if cfg.region else ""
        self.description = f"aws-secrets-manager {cfg.secret_id}{where}"
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def current_version(self) -> str:
        described = await self._call(lambda c: c.describe_secret(SecretId=self.cfg.secret_id))
        if described.get("DeletedDate") is not None:
            raise TokenSourceError(f"{self.description}: secret is scheduled for deletion")
        stages = described.get("VersionIdsToStages")
        if isinstance(stages, dict):
            for version_id, names in stages.items():
                if isinstance(names, list) and CURRENT_STAGE in names:
                    return str(version_id)
        raise TokenSourceError(f"{self.description}: no version has the {CURRENT_STAGE} stage")

    async def read(self) -> TokenVersion:
        version = await self.current_version()
        got = await self._call(
            lambda c: c.get_secret_value(SecretId=self.cfg.secret_id, VersionId=version)
        )
        return parse_token(
            self._token_text(got, version), description=self.description, version=version
        )

    async def write(self, token: TunnelToken) -> str:
        """PutSecretValue; a JSON secret keeps its other keys and gets ``token`` replaced."""
        got = await self._call(lambda c: c.get_secret_value(SecretId=self.cfg.secret_id))
        value: str = token.reveal()
        current = got.get("SecretString")
        if isinstance(current, str) and current.lstrip().startswith("{"):
            try:
                obj = json.loads(current)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                obj[JSON_KEY] = value
                value = json.dumps(obj)
        put = await self._call(
            lambda c: c.put_secret_value(SecretId=self.cfg.secret_id, SecretString=value)
        )
        version_id = put.get("VersionId")
        if not isinstance(version_id, str):
            raise TokenSourceError(f"{self.description}: unexpected response to PutSecretValue")
        log.info("aws_secret_written", source=self.description, version=version_id)
        return version_id

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def _token_text(self, got: dict[str, Any], version: str) -> str:
        text = got.get("SecretString")
        if not isinstance(text, str):
            binary = got.get("SecretBinary")
            try:
                text = bytes(binary).decode("utf-8") if binary is not None else None
            except (TypeError, UnicodeDecodeError):
                text = None
        if text is None:
            raise MalformedTokenError(f"{self.description}: secret has no text value", version)
        if not text.lstrip().startswith("{"):
            return text
        try:
            obj = json.loads(text)
        except ValueError:
            raise MalformedTokenError(
                f"{self.description}: secret is not valid JSON", version
            ) from None
        inner = obj.get(JSON_KEY) if isinstance(obj, dict) else None
        if not isinstance(inner, str):
            raise MalformedTokenError(
                f'{self.description}: secret JSON has no text "{JSON_KEY}" key', version
            )
        return inner

    async def _call(self, op: Callable[[Any], T]) -> T:
        client = await self._ensure_client()
        try:
            return await asyncio.to_thread(op, client)
        except Exception as exc:  # translated once, here
            raise self._translate(exc) from None

    async def _ensure_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._make_client)
            return self._client

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise TokenSourceError(
                f"{self.description}: boto3 is not installed; install tunnelkeeper[aws]"
            ) from None
        config = Config(
            connect_timeout=self.cfg.timeout_seconds,
            read_timeout=self.cfg.timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        try:
            return boto3.session.Session().client(
                "secretsmanager",
                region_name=self.cfg.region,
                endpoint_url=self.cfg.endpoint_url,
                config=config,
            )
        except Exception as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: Exception) -> TokenSourceError:
        from botocore import exceptions as bx

        d = self.description
        if isinstance(exc, TokenSourceError):
            return exc
        if isinstance(exc, bx.ClientError):
            raw_code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            # the endpoint is outside input: keep an error code's shape, nothing else
            code = re.sub(r"[^A-Za-z0-9._-]", "?", raw_code)[:64] or "Unknown"
            if code == "ResourceNotFoundException":
                return TokenSourceError(f"{d}: no secret {self.cfg.secret_id!r}")
            if code in _DENIED:
                return TokenSourceError(f"{d}: permission denied ({code})")
            if code == "DecryptionFailure":
                return TokenSourceError(f"{d}: cannot decrypt the secret (KMS: {code})")
            return TokenSourceError(f"{d}: request refused ({code})")
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return TokenSourceError(f"{d}: no AWS credentials found")
        if isinstance(exc, bx.NoRegionError):
            return TokenSourceError(f"{d}: no AWS region; set region in the token source")
        if isinstance(
            exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError
        ):
            return TokenSourceError(f"{d}: AWS endpoint unreachable")
        # Anything else from botocore (or a bad endpoint_url): named by type, never by message,
        # which could quote request data.
        return TokenSourceError(f"{d}: AWS client error ({type(exc).__name__})")
