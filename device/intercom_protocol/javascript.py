"""The protocol's constants as an ES module for the resident web app (`static/protocol.js`),
so the app never keeps a hand copy of a message type, an end reason, an error code or a close
code. `python -m intercom_protocol.javascript > tools/intercom_server/static/protocol.js`
writes it; `tests/test_webapp_modules.py` fails when the file differs from this."""

from __future__ import annotations

import json
from enum import StrEnum

from . import messages as m


def _enum(name: str, enum: type[StrEnum], export: str) -> str:
    members = ", ".join(f"{member.name}: {json.dumps(member.value)}" for member in enum)
    values = "|".join(json.dumps(member.value) for member in enum)
    return f"/** @typedef {{{values}}} {name} */\nexport const {export} = Object.freeze({{ {members} }});\n"


def module() -> str:
    closes = {"UNAUTHENTICATED": m.CLOSE_UNAUTHENTICATED, "TOKEN_REVOKED": m.CLOSE_TOKEN_REVOKED,
              "REPLACED": m.CLOSE_REPLACED, "SERVICE_RESTART": m.CLOSE_SERVICE_RESTART}
    return "\n".join([
        "// Generated from the Python package intercom_protocol (python -m intercom_protocol.javascript):",
        "// do not edit. The wire contract is docs/protocol.md.",
        "",
        f"export const PROTOCOL_PATH = {json.dumps(m.PROTOCOL_PATH)};",
        f"export const REQUEST_TYPES = Object.freeze({json.dumps(sorted(m.REQUEST_TYPES))});",
        f"export const EVENT_TYPES = Object.freeze({json.dumps(list(m.EVENT_TYPES))});",
        "/** WebSocket close codes the server uses. */",
        "export const CLOSE = Object.freeze({ " + ", ".join(f"{k}: {v}" for k, v in closes.items()) + " });",
        _enum("ErrorCode", m.ErrorCode, "ERROR_CODES"),
        _enum("EndReason", m.EndReason, "END_REASONS"),
    ])


if __name__ == "__main__":
    print(module(), end="")
