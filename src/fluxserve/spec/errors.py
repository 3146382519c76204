"""The error every request rule raises."""

from __future__ import annotations


class SpecError(ValueError):
    """A request value that breaks a rule; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
