"""A token in Vault or OpenBao KV v2, authenticated by a token file or AppRole.

Polling reads only metadata (``current_version``); the secret is fetched when that changes.
Library and HTTP errors are translated here, once, into TokenSourceError with a safe message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper.config.model import VaultSourceConfig
from tunnelkeeper.sources.base import (
    MalformedTokenError,
    TokenSource,
    TokenSourceError,
    TokenVersion,
    parse_token,
)
from tunnelkeeper.sources.local import read_token_text
from tunnelkeeper.tunneltoken import TunnelToken

if TYPE_CHECKING:  # imported where used: the daemon loads httpx only if it needs it
    import ssl

    import httpx

log = structlog.get_logger(__name__)

TRUE_WORDS = ("1", "true", "t", "yes", "y")
RENEW_AT_FRACTION = 2 / 3


def _env_flag(environ: Mapping[str, str], *names: str) -> bool:
    return any(environ.get(n, "").strip().lower() in TRUE_WORDS for n in names)


def _is_past(timestamp: str) -> bool:
    """Vault's RFC 3339 UTC timestamps; an unparseable non-empty one counts as past."""
    try:
        at = datetime.fromisoformat(timestamp[:19]).replace(tzinfo=UTC)
    except ValueError:
        return True
    return at <= datetime.now(UTC)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class VaultSource(TokenSource):
    is_writable = True

    def __init__(
        self,
        cfg: VaultSourceConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._addr = cfg.addr.rstrip("/")
        self._mount = cfg.mount.strip("/")
        self._path = cfg.path.strip("/")
        self.description = f"vault {self._addr} {self._mount}/{self._path}#{cfg.field}"
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._renew_deadline: float | None = None
        self._use_approle = cfg.role_id_file is not None or cfg.secret_id_file is not None
        if self._use_approle and (cfg.role_id_file is None or cfg.secret_id_file is None):
            raise TokenSourceError(
                f"{self.description}: AppRole needs role_id_file and secret_id_file"
            )
        if not self._use_approle and cfg.token_file is None:
            raise TokenSourceError(
                f"{self.description}: set token_file, or role_id_file and secret_id_file"
            )

    # --- the TokenSource interface -------------------------------------------------------------

    async def current_version(self) -> str:
        meta = _obj((await self._json("GET", self._url("metadata"))).get("data"))
        current = meta.get("current_version")
        if not isinstance(current, int) or isinstance(current, bool) or current < 1:
            raise TokenSourceError(f"{self.description}: no usable current version")
        info = _obj(_obj(meta.get("versions")).get(str(current)))
        if info.get("destroyed") is True:
            raise TokenSourceError(
                f"{self.description}: no usable current version (version {current} is destroyed)"
            )
        deleted = info.get("deletion_time")
        if isinstance(deleted, str) and deleted and _is_past(deleted):
            raise TokenSourceError(
                f"{self.description}: no usable current version (version {current} is deleted)"
            )
        return str(current)

    async def read(self) -> TokenVersion:
        version = await self.current_version()
        body = await self._json("GET", self._url("data"), params={"version": version})
        data = _obj(_obj(body.get("data")).get("data"))
        value = data.get(self.cfg.field)
        if not isinstance(value, str):
            raise MalformedTokenError(
                f"{self.description}: version {version} has no text field {self.cfg.field!r}",
                version,
            )
        return parse_token(
            value, description=f"{self.description} (version {version})", version=version
        )

    async def write(self, token: TunnelToken) -> str:
        try:
            meta = _obj((await self._json("GET", self._url("metadata"))).get("data"))
            current = meta.get("current_version")
            cas = current if isinstance(current, int) and not isinstance(current, bool) else 0
        except _NotFound:
            cas = 0
        data: dict[str, Any] = {}
        if cas > 0:  # keep the secret's other fields; CAS below guards against a race
            try:
                body = await self._json("GET", self._url("data"), params={"version": str(cas)})
                data = dict(_obj(_obj(body.get("data")).get("data")))
            except _NotFound:
                data = {}
        data[self.cfg.field] = token.reveal()
        payload = {"options": {"cas": cas}, "data": data}
        body = await self._json("POST", self._url("data"), json=payload)
        version = _obj(body.get("data")).get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise TokenSourceError(f"{self.description}: unexpected response to the write")
        log.info("vault_secret_written", source=self.description, version=version)
        return str(version)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- HTTP ----------------------------------------------------------------------------------

    def _url(self, kind: str) -> str:
        return f"/v1/{self._mount}/{kind}/{self._path}"

    def _http(self) -> httpx.AsyncClient:
        import httpx  # only a daemon with a vault source loads it

        if self._client is None:
            headers = {"X-Vault-Request": "true"}
            if self.cfg.namespace:
                headers["X-Vault-Namespace"] = self.cfg.namespace
            self._client = httpx.AsyncClient(
                base_url=self._addr,
                headers=headers,
                timeout=self.cfg.timeout_seconds,
                verify=self._verify(),
                trust_env=False,
            )
        return self._client

    def _verify(self) -> ssl.SSLContext | bool:
        if _env_flag(self._environ, "VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY"):
            log.warning("vault_tls_verify_disabled", source=self.description)
            return False
        ca = (
            self.cfg.ca_cert or self._environ.get("VAULT_CACERT") or self._environ.get("BAO_CACERT")
        )
        if not ca:
            return True
        import ssl  # the daemon runs without it until needed (tunnelkeeper/noopenssl.py)

        try:
            return ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError):
            raise TokenSourceError(f"{self.description}: cannot load CA certificate {ca}") from None

    async def _send(
        self, method: str, url: str, *, token: str | None, **kwargs: Any
    ) -> httpx.Response:
        import httpx

        headers = {"X-Vault-Token": token} if token else {}
        try:
            return await self._http().request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise TokenSourceError(
                f"{self.description}: vault unreachable (no answer within "
                f"{self.cfg.timeout_seconds:g} s)"
            ) from None
        except httpx.HTTPError as exc:
            detail = str(exc)[:200] or type(exc).__name__
            raise TokenSourceError(f"{self.description}: vault unreachable: {detail}") from None

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """An authenticated call; on 403 the credentials are refreshed and the call retried once."""
        token = await self._auth_token()
        resp = await self._send(method, url, token=token, **kwargs)
        if resp.status_code == 403 and await self._refresh_after_denied(token):
            resp = await self._send(method, url, token=self._token, **kwargs)
        return self._checked(resp)

    def _checked(self, resp: httpx.Response) -> dict[str, Any]:
        code = resp.status_code
        if code == 404:
            raise _NotFound(f"{self.description}: no secret at {self._mount}/{self._path}")
        if code == 403:
            raise TokenSourceError(f"{self.description}: permission denied")
        if code == 400 and "check-and-set" in resp.text:
            raise TokenSourceError(
                f"{self.description}: the secret changed while writing "
                "(check-and-set mismatch); nothing written"
            )
        if code == 503:
            raise TokenSourceError(f"{self.description}: vault is sealed or unavailable (HTTP 503)")
        if code == 204:
            return {}
        if not 200 <= code < 300:
            raise TokenSourceError(f"{self.description}: vault answered HTTP {code}")
        try:
            body = resp.json()
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise TokenSourceError(f"{self.description}: vault sent a response that is not JSON")
        return body

    # --- authentication ------------------------------------------------------------------------

    async def _auth_token(self) -> str:
        if self._token is None:
            if self._use_approle:
                await self._login()
            else:
                self._token = self._read_token_file()
        elif self._renew_deadline is not None and self._clock() >= self._renew_deadline:
            await self._renew()
        assert self._token is not None
        return self._token

    async def _refresh_after_denied(self, denied: str) -> bool:
        """True when there are fresh credentials worth one retry."""
        if self._use_approle:
            await self._login()
            return True
        self._token = self._read_token_file()
        return self._token != denied

    def _read_token_file(self) -> str:
        assert self.cfg.token_file is not None
        token = read_token_text(self.cfg.token_file, f"{self.description}: token_file").strip()
        if not token:
            raise TokenSourceError(f"{self.description}: token_file {self.cfg.token_file} is empty")
        return token

    async def _login(self) -> None:
        assert self.cfg.role_id_file is not None and self.cfg.secret_id_file is not None
        role_id = read_token_text(self.cfg.role_id_file, f"{self.description}: role_id_file")
        secret_id = read_token_text(self.cfg.secret_id_file, f"{self.description}: secret_id_file")
        url = f"/v1/auth/{self.cfg.approle_mount.strip('/')}/login"
        payload = {"role_id": role_id.strip(), "secret_id": secret_id.strip()}
        self._token = None
        resp = await self._send("POST", url, token=None, json=payload)
        if resp.status_code in (400, 403):
            raise TokenSourceError(
                f"{self.description}: AppRole login refused "
                "(role_id or secret_id invalid or expired)"
            )
        self._adopt(self._checked(resp))
        log.info("vault_logged_in", source=self.description, method="approle")

    async def _renew(self) -> None:
        resp = await self._send("POST", "/v1/auth/token/renew-self", token=self._token, json={})
        try:
            self._adopt(self._checked(resp))
        except TokenSourceError as exc:
            log.warning("vault_token_renewal_failed", source=self.description, error=str(exc))
            await self._login()
            return
        log.info("vault_token_renewed", source=self.description)

    def _adopt(self, body: dict[str, Any]) -> None:
        auth = _obj(body.get("auth"))
        token = auth.get("client_token")
        lease = auth.get("lease_duration")
        if not isinstance(token, str) or not token:
            raise TokenSourceError(f"{self.description}: vault login answered without a token")
        self._token = token
        renewable = auth.get("renewable") is True
        if renewable and isinstance(lease, int) and lease > 0:
            self._renew_deadline = self._clock() + lease * RENEW_AT_FRACTION
        else:
            self._renew_deadline = None


class _NotFound(TokenSourceError):
    """404 from vault; a TokenSourceError so callers that don't care see the plain message."""
