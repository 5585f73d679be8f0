"""Exceptions of the chat server.

    ScalechatError
     +-- SettingsError        an invalid setting; names the setting (start-up stops)
     +-- ProtocolError        a client frame we reject; carries an ErrorCode, the socket stays open
     +-- BrokerUnavailable    the broker cannot store a message now (maps to ErrorCode.UNAVAILABLE)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalechat.chat.protocol import ErrorCode


class ScalechatError(Exception):
    """Base of every error this package raises on purpose."""


class SettingsError(ScalechatError, ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid setting {name}: {problem}")
        self.name = name
        self.problem = problem


class ProtocolError(ScalechatError):
    """A client frame that is answered with an ``error`` frame; the connection stays open."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class BrokerUnavailable(ScalechatError):
    """The broker could not store the message; nothing was published."""
