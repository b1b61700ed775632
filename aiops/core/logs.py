"""Log lines for people and machines: ``time level logger message key=value ...``.

Every record of every logger (ours, uvicorn's, the libraries') is redacted when it is
made (``aiops.core.redact.redact``: passwords and tokens inside URLs), so no handler,
formatter or test capture ever sees a secret a message or a traceback carried.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from aiops.core.redact import redact


def _redacting(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it where it always did
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    factory.aiops_redacts = True  # type: ignore[attr-defined]
    return factory


def install_redaction() -> None:
    """Redact every log record from now on, whoever logs it (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "aiops_redacts", False):
        logging.setLogRecordFactory(_redacting(current))


def setup_logging(level: str = "INFO") -> None:
    install_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
