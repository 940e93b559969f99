"""The first things that go wrong for a new installer, each answered in one line that says what
to do, with an exit code and no traceback."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    result = subprocess.run([PYTHON, *argv], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip().splitlines(), result.stdout


def example(tmp_path: Path, **replace: str) -> Path:
    """The shipped door example with its token beside it; `replace` edits the text."""
    text = (ROOT / "config/intercom.example.yaml").read_text().replace("/etc/intercom/token", "token")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "token").write_text("ict_x\n")
    (tmp_path / "token").chmod(0o600)
    path = tmp_path / "intercom.yaml"
    path.write_text(text)
    return path


LGPIO = ("hardware.pins.backend is lgpio, but the lgpio library is not installed here; on Raspberry Pi OS: "
         "sudo apt install python3-lgpio and make the venv with --system-site-packages (or pip install lgpio); "
         "without a Pi, backend: mock simulates the pins")
PICAMERA2 = ("hardware.camera.backend is picamera2, but the picamera2 library is not installed here; on Raspberry "
             "Pi OS: sudo apt install python3-picamera2 and make the venv with --system-site-packages (pip cannot "
             "install libcamera); without a Pi camera, backend: test_pattern")


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None or importlib.util.find_spec("picamera2") is not None,
                    reason="this machine has the Pi's libraries")
def test_a_missing_hardware_library_says_which_package_to_install(tmp_path):
    config = example(tmp_path)
    # The unmodified example is valid YAML, but this machine cannot run it: check-config says so.
    assert run("-m", "intercom.cli", "check-config", str(config))[:2] == (1, [f"{config}: {LGPIO}",
                                                                                f"{config}: {PICAMERA2}"])
    for command in ("run", "selftest"):
        assert run("-m", "intercom.cli", command, "--config", str(config))[:2] == (1, [f"intercom: {LGPIO}"])
    config = example(tmp_path, **{"backend: lgpio": "backend: mock"})
    assert run("-m", "intercom.cli", "run", "--config", str(config))[:2] == (1, [f"intercom: {PICAMERA2}"])


def test_a_missing_yaml_is_named_with_what_to_copy(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    assert run("-m", "intercom_server.cli", "--config", str(missing), "serve")[:2] == (1, [
        f"intercom-server: there is no config file at {missing}: `intercom-server --config {missing} init` writes "
        f"the annotated example there to edit, or give the right --config"])
    door = (f"intercom: there is no config file at {missing}: `intercom init --config {missing}` writes the "
            f"annotated example there to edit, or give --config PATH")
    assert run("-m", "intercom.cli", "run", "--config", str(missing))[:2] == (1, [door])
    # With $INTERCOM_CONFIG naming it, plain `intercom init` writes there.
    assert run("-m", "intercom.cli", "run", env={"INTERCOM_CONFIG": str(missing)})[:2] == (1, [
        door.replace(f"intercom init --config {missing}", "intercom init")])
    assert run("-m", "intercom.cli", "check-config", str(missing))[:2] == (1, [door])


def test_intercom_ctl_finds_the_socket_without_flags(tmp_path):
    """Its YAML names the socket; ctl reads only that, so a shell user who cannot read the
    door's token still finds the daemon."""
    config = example(tmp_path, **{"socket: /run/intercom/control.sock": "socket: ctl.sock"})
    (tmp_path / "token").chmod(0o000)
    line = (f"intercom: no door station is running with the control socket {tmp_path / 'ctl.sock'} (systemctl "
            f"status intercom); give --socket or --config if it uses another")
    assert run("-m", "intercom.cli", "ctl", "status", env={"INTERCOM_CONFIG": str(config)})[:2] == (1, [line])
    # --config before or after the subcommand.
    assert run("-m", "intercom.cli", "--config", str(config), "ctl", "status")[:2] == (1, [line])
    assert run("-m", "intercom.cli", "ctl", "press", "--config", str(config))[:2] == (1, [line])
    # No YAML at all: the default socket.
    code, lines, _ = run("-m", "intercom.cli", "ctl", "status", env={"INTERCOM_CONFIG": str(tmp_path / "none")})
    assert code == 1 and lines == [line.replace(str(tmp_path / "ctl.sock"), "/run/intercom/control.sock")]


def test_the_demo_with_its_port_taken_says_how_to_choose_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run("-m", "intercom_sim.demo", "--port", str(port))[:2] == (1, [
            f"demo: port {port} is in use (another demo or server?): stop it, or choose another port with "
            f"make demo DEMO_ARGS='--port {port + 1}'"])


def test_a_key_that_is_a_list_or_a_mapping_is_one_line_with_its_line(tmp_path):
    """`? [a, b]` is valid YAML, but no Python dict can hold it: one line, not a TypeError."""
    bad = tmp_path / "x.yaml"
    bad.write_text("# a comment\n? [a, b]\n: 1\n")
    line = f"{bad}: (file) (line 2): not valid YAML: a key must be a plain word or number, not a list or a mapping"
    assert run("-m", "intercom_server.cli", "--config", str(bad), "serve")[:2] == (2, [line])
    assert run("-m", "intercom.cli", "check-config", str(bad))[:2] == (2, [line])
    bad.write_text("server:\n  url: ws://x/v1/ws\n  {url: x}: 1\n")
    assert run("-m", "intercom.cli", "check-config", str(bad))[:2] == (2, [line.replace("line 2", "line 3")])


def test_init_writes_the_annotated_examples_and_never_overwrites(tmp_path):
    """An installer who used pip has no checkout: the examples come with the package."""
    door, server = tmp_path / "etc" / "intercom.yaml", tmp_path / "etc" / "server.yaml"
    code, errors, out = run("-m", "intercom.cli", "init", env={"INTERCOM_CONFIG": str(door)})
    assert (code, errors) == (0, []) and out.splitlines()[0].startswith(f"Wrote {door}, the annotated example")
    assert door.read_text() == (ROOT / "config/intercom.example.yaml").read_text()
    assert oct(door.stat().st_mode & 0o777) == "0o644"
    code, errors, out = run("-m", "intercom_server.cli", "--config", str(server), "init")
    assert (code, errors) == (0, []) and out.startswith(f"Wrote {server}, the annotated example")
    assert server.read_text() == (ROOT / "config/server.example.yaml").read_text()

    door.write_text("# the installer's own edits\n")
    assert run("-m", "intercom.cli", "init", "--config", str(door))[:2] == (1, [
        f"intercom: {door} exists already; nothing was written (edit it, or move it away first)"])
    assert run("-m", "intercom_server.cli", "init", "--config", str(door))[:2] == (1, [
        f"intercom-server: {door} exists already; nothing was written (edit it, or move it away first)"])
    assert door.read_text() == "# the installer's own edits\n"
    (tmp_path / "file").write_text("")
    assert run("-m", "intercom.cli", "init", "--config", str(tmp_path / "file" / "x.yaml"))[:2] == (1, [
        f"intercom: cannot write {tmp_path / 'file' / 'x.yaml'}: Not a directory"])


def test_pair_without_a_yaml_says_to_run_init_first(tmp_path):
    missing = tmp_path / "intercom.yaml"
    assert run("-m", "intercom.cli", "pair", "http://127.0.0.1:1/#pair=abcdefghijklmnopqrst",
               env={"INTERCOM_CONFIG": str(missing)})[:2] == (1, [
        f"intercom: there is no config file at {missing}: `intercom init` writes the annotated example there to "
        f"edit, or give --config PATH"])
