"""The session API's refusals: an HTTP status, a stable code and a message that never holds a value."""

from __future__ import annotations


class ApiError(Exception):
    """An API refusal: HTTP status, stable code, message (never a secret value)."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)
