"""Secrets out of what people read: the one redaction of the service.

A URL may carry credentials: user info (``postgresql://aiops:PASSWORD@db/aiops``,
``http://user:PASSWORD@prometheus:9090``, ``https://TOKEN@host/``) and secret-looking
query parameters (``?token=…``, ``&api_key=…``, ``&sig=…``). ``redact_url`` masks them
in one URL, ``redact`` in every URL of a text (and ``password=…`` pairs of a libpq
connection string). Every log line (``aiops.core.logs`` installs it for every logger),
health answer, audit row an action writes, configuration error and one-line CLI
failure goes through these two functions; nothing else masks secrets.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

#: what a masked secret reads as
MASK = "***"

#: a URL in free text: a scheme, ``://`` and everything up to whitespace or a quote
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")

#: words that make a query parameter (or a ``key=value`` pair) secret, whole or as a part
#: of its name split at ``_``, ``-`` and ``.``: ``token``, ``access_token``, ``X-Amz-Signature``
_SECRET_WORDS = frozenset(
    {
        "token",
        "key",
        "apikey",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "sessionid",
        "jwt",
        "bearer",
        "private",
    }
)
#: names that hold such a word without a separator (``accesstoken``, ``clientsecret``)
_SECRET_PARTS = ("token", "secret", "passw", "apikey", "signature", "credential")

#: ``password=…`` in a libpq connection string or a log line
_PAIR = re.compile(r"(?i)\b(password|passwd|pwd)=(?:'[^']*'|[^\s&;,'\"]+)")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or setting) of this name holds a secret."""
    low = name.strip().lower()
    parts = re.split(r"[_.\-\s\[\]]+", low)
    return any(p in _SECRET_WORDS for p in parts) or any(s in low for s in _SECRET_PARTS)


def _redact_params(text: str) -> str:
    """``a=1&token=x;sig=y`` → ``a=1&token=***;sig=***`` (order and spelling kept)."""
    out = []
    for item in re.split(r"([&;])", text):
        name, eq, value = item.partition("=")
        if eq and value and is_secret_name(unquote_plus(name)):
            item = f"{name}={MASK}"
        out.append(item)
    return "".join(out)


#: a user name that is an account, not a token (``https://TOKEN:x-oauth-basic@github.com``)
_ACCOUNT = re.compile(r"^[A-Za-z0-9._%+-]{1,32}$")
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "github_pat_", "glpat-", "xox")


def _redact_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if colon and _ACCOUNT.match(user) and not user.lower().startswith(_TOKEN_PREFIXES):
        return f"{user}:{MASK}"  # the account stays readable: which server, which user
    return MASK


def redact_url(url: str) -> str:
    """``url`` with its user info and secret-looking query parameters masked.

    ``http://user:pw@host/p?token=t&a=1`` → ``http://user:***@host/p?token=***&a=1``;
    a user info without a password, or whose user looks like a token
    (``https://TOKEN@host``), is masked whole. Works on malformed URLs too (a password
    holding ``#`` or ``@``): the user info is everything before the authority's last ``@``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redact_tail(url)
    # the authority ends at the first "/" or "?" ("#" may sit inside a careless password)
    ends = [i for i in (rest.find("/"), rest.find("?")) if i != -1]
    end = min(ends) if ends else len(rest)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if at:
        authority = f"{_redact_userinfo(userinfo)}@{host}"
    return f"{scheme}://{authority}{_redact_tail(tail)}"


def _redact_tail(tail: str) -> str:
    """A URL's path, query and fragment with secret-looking parameters masked."""
    rest, h, fragment = tail.partition("#")
    path, q, query = rest.partition("?")
    if q:
        query = _redact_params(query)
    if h and "=" in fragment:  # OAuth's implicit flow: #access_token=...
        fragment = _redact_params(fragment)
    return f"{path}{q}{query}{h}{fragment}"


def redact(text: str) -> str:
    """``text`` with every URL's credentials masked (``redact_url``) and every
    ``password=…`` pair masked; everything else unchanged."""
    if not text:
        return text
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    if "=" in text:
        text = _PAIR.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return text


def redact_value(value: Any) -> Any:
    """``redact`` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def short_error(exc: BaseException, limit: int = 200) -> str:
    """One line saying what went wrong, redacted, at most ``limit`` characters: the driver's
    own error where a database error wraps one (``exc.orig``), whitespace collapsed. Redacted
    before it is cut, so a secret is never half-shown."""
    return redact(" ".join(str(getattr(exc, "orig", exc)).split()))[:limit]
