"""Secrets out of what people read: passwords inside URLs.

A URL may carry credentials (``postgresql://aiops:PASSWORD@db/aiops``,
``http://user:PASSWORD@prometheus:9090``). ``redact`` masks the password of every such
URL in a text, for log lines, error messages and health bodies.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)[^@/\s'\"]+@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _USERINFO.sub(r"\g<head>***@", text)
