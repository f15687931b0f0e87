"""What the fake Discord answers errors with and what it records of requests and interactions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

API_VERSION = 10
EPHEMERAL = 1 << 6
LOADING = 1 << 7
_MENTION_RE = re.compile(r"<@!?(\d+)>")


class ApiError(Exception):
    """Raised inside request handlers; becomes Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def missing_permissions() -> ApiError:
    return ApiError(403, 50013, "Missing Permissions")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


def form_error(errors: dict) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", errors)


def _field_error(code: str, message: str) -> dict:
    return {"_errors": [{"code": code, "message": message}]}


@dataclass
class RequestRecord:
    """One REST call as the server saw it."""

    method: str
    path: str  # relative to api_base, percent-decoded, e.g. "/channels/1/messages"
    query: dict[str, str]
    json: Any  # JSON body or multipart payload_json (None if none)
    files: list[str]  # uploaded file names (multipart)
    status: int = 0


@dataclass
class InteractionRecord:
    """An interaction this fake sent to the bot and what the bot answered."""

    id: int
    token: str
    type: int  # 2 = application command, 3 = component
    channel_id: int
    user_id: int
    name: str | None = None  # command name (type 2)
    custom_id: str | None = None  # component custom_id (type 3)
    message_id: int | None = None  # message the component is on (type 3)
    callback_types: list[int] = field(default_factory=list)  # 4, 5, 6, 7, 9 ...
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict | None = None  # data of a type-9 (modal) callback

    @property
    def responded(self) -> bool:
        return bool(self.callback_types)

