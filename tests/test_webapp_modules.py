"""The web app's modules: their protocol constants come from the protocol package, and every
module the app imports is served and kept for offline use."""

from __future__ import annotations

import re
from pathlib import Path

from intercom_protocol import javascript
from intercom_server.webapp import FILES, STATIC

IMPORT = re.compile(r'^import .*?"(?:\./|/)([\w.]+\.js)";', re.MULTILINE)


def test_protocol_js_is_what_the_protocol_package_says() -> None:
    written = (STATIC / "protocol.js").read_text()
    assert written == javascript.module(), (
        "static/protocol.js is out of date: python -m intercom_protocol.javascript > "
        "tools/intercom_server/static/protocol.js")


def imported_modules(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += IMPORT.findall((STATIC / name).read_text())
    return seen


def test_every_module_the_app_imports_is_served_and_kept_offline() -> None:
    modules = imported_modules("app.js")
    assert {"protocol.js", "connection.js", "calls.js", "history.js", "push.js", "keystore.js"} <= modules
    served = {name for name, _ in FILES.values()}
    assert modules <= served
    shell = re.search(r"const SHELL = \[(.*?)\];", (STATIC / "sw.js").read_text(), re.DOTALL)
    assert shell is not None
    cached = {Path(path).name for path in re.findall(r'"(/[^"]*)"', shell.group(1))}
    assert modules <= cached, f"sw.js does not keep {sorted(modules - cached)} for offline use"
