"""Who may call what: bearer tokens with scopes, and writes only from the service's own pages.

With no token configured everything is open to whoever reaches the port, except that a
browser page of another origin may not write (an upload or feedback sent by a page the user
happens to visit). With any token configured (QPBOT_API_TOKEN, QPBOT_API_TOKENS), reads need
the read scope and writes the write scope; admin holds every scope.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from qpbot_serving.settings import QpbotSettings, Scope


class Unauthorized(Exception):
    """No token, or one that is not configured: 401."""


class Forbidden(Exception):
    """A known token without the scope, or a write from another origin's page: 403."""


@dataclass(frozen=True)
class Access:
    tokens: tuple[tuple[bytes, frozenset[str]], ...]  # (token, scopes)
    allowed_origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: QpbotSettings) -> Access:
        tokens = [(t.token.get_secret_value(), frozenset(t.scopes)) for t in settings.api_tokens]
        if settings.api_token is not None:
            tokens.append((settings.api_token.get_secret_value(), frozenset({"admin"})))
        return cls(
            tokens=tuple((token.encode(), scopes) for token, scopes in tokens),
            allowed_origins=frozenset(o.rstrip("/") for o in settings.cors_origins),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def check(self, scope: Scope, authorization: str | None) -> None:
        """Raises Unauthorized or Forbidden unless `authorization` ("Bearer <token>") may
        act in `scope`; passes when no token is configured."""
        if not self.enabled:
            return
        kind, _, presented = (authorization or "").partition(" ")
        if kind.lower() != "bearer" or not presented:
            raise Unauthorized(f"this endpoint needs 'Authorization: Bearer <token>' ({scope})")
        scopes = self._scopes_of(presented.strip().encode())
        if scopes is None:
            raise Unauthorized("the bearer token is not one this service knows")
        if scope not in scopes and "admin" not in scopes:
            raise Forbidden(f"the token has no {scope!r} scope")

    def check_origin(self, headers, host: str | None) -> None:
        """Refuses a request a browser sent from a page of another origin, unless that origin
        is in QPBOT_CORS_ORIGINS. API clients send no Origin and pass."""
        origin = headers.get("origin")
        if origin is None:  # not sent by a page's script or form, unless the browser says so
            if headers.get("sec-fetch-site") not in ("cross-site", "same-site"):
                return
        elif origin != "null":  # "null": a sandboxed or local page, never trusted
            if origin.rstrip("/") in self.allowed_origins or urlsplit(origin).netloc == host:
                return
        raise Forbidden(
            f"writes from pages of another origin ({origin or 'a cross-site page'}) are "
            "refused; add the origin to QPBOT_CORS_ORIGINS to allow it"
        )

    def _scopes_of(self, presented: bytes) -> frozenset[str] | None:
        found = None
        for token, scopes in self.tokens:  # every token compared, in constant time each
            if hmac.compare_digest(token, presented):
                found = scopes
        return found
