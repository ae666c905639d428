"""Domain errors shared by every layer.

Each error carries the HTTP status it maps to and a short machine-readable ``code``; the API layer turns them into
RFC 9457 problem+json documents. Engine and imaging code raise these instead of bare exceptions so that a client
always learns *what* was wrong with its request.
"""

from __future__ import annotations

from typing import Any


class XaasError(Exception):
    """Base class: an error with a client-facing title/detail and an HTTP status."""

    status: int = 500
    code: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class BadOption(XaasError):
    status, code, title = 400, "bad-option", "Malformed option"


class NotFound(XaasError):
    status, code, title = 404, "not-found", "Not found"


class PayloadTooLarge(XaasError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(XaasError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidImage(XaasError):
    """The bytes were received but are not a decodable image (truncated, corrupt, unknown format)."""

    status, code, title = 422, "invalid-image", "Image could not be decoded"


class InvalidOption(XaasError):
    """An option was well-formed but its value is not acceptable (out of range, unknown class label...)."""

    status, code, title = 422, "invalid-option", "Invalid option value"


class QueueFull(XaasError):
    status, code, title = 429, "queue-full", "Too many requests queued"


class ServiceUnavailable(XaasError):
    status, code, title = 503, "unavailable", "Service unavailable"


class DeadlineExceeded(XaasError):
    status, code, title = 504, "deadline-exceeded", "Request deadline exceeded"


class ModelExecutionError(XaasError):
    """The model failed on a job for a reason that is not the client's fault."""

    status, code, title = 500, "model-error", "Model execution failed"


class ConfigError(Exception):
    """A broken registry entry or setting: names the entry and the field, fails start-up."""
