"""Credentials out of log records, exception messages and reprs.

A feed URL may carry ``user:password@`` or a token in its query string
(``?access_token=...``, a common way to authenticate an ``EventSource``).
:class:`Redactor` knows the secret values of one URL and replaces them, in
any text (including the messages of requests' and urllib3's exceptions, which
quote the URL), with ``***``.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, List, Optional
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

# Query parameters whose value is taken for a secret (compared in lower case,
# "-" as "_"): exact names, and names ending with one of the suffixes.
_SECRET_NAMES = {"token", "access_token", "refresh_token", "id_token", "auth", "key",
                 "api_key", "apikey", "password", "passwd", "pwd", "secret",
                 "client_secret", "signature", "sig", "jwt", "session", "sessionid",
                 "code", "ticket", "credential", "credentials"}
_SECRET_SUFFIXES = ("token", "secret", "password", "key", "signature")
MASK = "***"


def _is_secret(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)


class Redactor:
    """Redacts the secrets of ``url`` (and anything derived from them), and
    the ``extra`` ones (passwords given beside the URL)."""

    def __init__(self, url: object, extra: Iterable[Optional[str]] = ()):
        self.secrets: List[str] = [s for s in extra if isinstance(s, str) and s]
        self.url = str(url)
        try:
            parts = urlsplit(self.url)
        except ValueError:
            self._compile()
            return
        if parts.password:
            self.secrets.append(parts.password)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _is_secret(name):
                self.secrets.append(value)
        # The raw (percent-encoded) and decoded forms may both appear.
        more = [quote(s, safe="") for s in self.secrets]
        raw_query = parts.query
        for piece in raw_query.split("&"):
            name, _, value = piece.partition("=")
            if value and _is_secret(name.replace("+", " ")):
                more.append(value)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo = netloc.rsplit("@", 1)[0]
            if ":" in userinfo:
                more.append(userinfo.split(":", 1)[1])
        self.secrets += more
        self._compile()
        self.safe_url = self._masked(parts)

    def _compile(self) -> None:
        self.secrets = sorted({s for s in self.secrets if s}, key=len, reverse=True)
        self._pattern = (re.compile("|".join(re.escape(s) for s in self.secrets))
                         if self.secrets else None)

    @staticmethod
    def _masked(parts: SplitResult) -> str:
        """The URL with its password and secret query values masked, built
        piece by piece (a text substitution would also mask a short secret
        where it happens to occur elsewhere in the URL)."""
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
        pieces = []
        for piece in parts.query.split("&") if parts.query else ():
            name, eq, value = piece.partition("=")
            pieces.append(f"{name}={MASK}" if value and _is_secret(name.replace("+", " "))
                          else piece)
        return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pieces), parts.fragment))

    def __call__(self, text: object) -> str:
        """``text`` as a str with every secret replaced by ``***``."""
        text = str(text)
        pattern = getattr(self, "_pattern", None)
        return text if pattern is None else pattern.sub(MASK, text)

    def exception(self, exc: BaseException) -> BaseException:
        """``exc``, or a copy of the same type whose message has the secrets
        replaced (for ``__cause__``: a printed traceback shows its message)."""
        text = str(exc)
        pattern = getattr(self, "_pattern", None)
        if pattern is None or not pattern.search(text):
            return exc
        # Any signature: a constructor that refuses these arguments is caught.
        make: Callable[..., BaseException] = type(exc)
        try:
            if hasattr(exc, "request") and hasattr(exc, "response"):   # requests' errors
                clean = make(self(text), request=exc.request, response=exc.response)
            else:
                clean = make(self(text))
        except Exception:  # noqa: BLE001 - an exception type with another signature
            clean = RuntimeError(f"{type(exc).__name__}: {self(text)}")
        clean.__suppress_context__ = True
        return clean.with_traceback(exc.__traceback__)


def redact_url(url: object) -> str:
    """``url`` with its password and secret query values replaced by ``***``."""
    redactor = Redactor(url)
    return getattr(redactor, "safe_url", str(url))
