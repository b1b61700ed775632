"""Domain errors. Everything the service raises on purpose subclasses AiopsError."""

from __future__ import annotations


class AiopsError(Exception):
    """Base class of the project's errors."""


class ConfigError(AiopsError):
    """A setting is missing or invalid. The message names the setting, on one line."""


class QueryError(AiopsError):
    """A Prometheus query failed.

    ``kind`` is one of ``unreachable``, ``timeout``, ``bad_query``, ``server_error``,
    ``bad_response``; it is the label of ``aiops_detector_query_errors_total``.
    """

    def __init__(self, query: str, kind: str, message: str) -> None:
        super().__init__(f"query {query!r}: {kind}: {message}")
        self.query = query
        self.kind = kind
        self.message = message
