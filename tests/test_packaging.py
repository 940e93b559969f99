"""Each program installs and starts without the other's libraries: a server needs neither ALSA
nor the echo canceller, a door needs neither the push nor the QR code libraries."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Imported only by the door (and the tools that run one); never by the server.
DOOR_ONLY = {"aiortc": "aiortc", "av": "av", "alsaaudio": "pyalsaaudio", "gpiozero": "gpiozero",
             "numpy": "numpy", "livekit": "livekit"}
#: Imported only by the server.
SERVER_ONLY = {"qrcode": "qrcode", "http_ece": "http-ece", "py_vapid": "py-vapid", "intercom_server": None}

IMPORT_ALL_WITHOUT = """
import importlib, importlib.abc, pkgutil, sys
missing = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed for this program)")
        return None
sys.meta_path.insert(0, Absent())
for package in sys.argv[2:]:
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(module.name)
print("imported")
"""


def import_all(packages: list[str], without: set[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", IMPORT_ALL_WITHOUT, ",".join(sorted(without)), *packages],
                          capture_output=True, text=True, timeout=60)


def requirement_names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}


def test_the_server_starts_without_the_door_libraries() -> None:
    done = import_all(["intercom_protocol", "intercom_server"], set(DOOR_ONLY))
    assert done.returncode == 0, done.stderr
    help_text = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_WITHOUT.replace('print("imported")', "") +
         "\nfrom intercom_server.cli import main\nmain(['--help'])", ",".join(DOOR_ONLY)],
        capture_output=True, text=True, timeout=60)
    assert "serve" in help_text.stdout, help_text.stderr


def test_the_door_starts_without_the_server_libraries() -> None:
    done = import_all(["intercom_protocol", "intercom"], set(SERVER_ONLY))
    assert done.returncode == 0, done.stderr


def test_the_install_extras_match() -> None:
    """`intercom[server]` brings no door library, `intercom[door]` no server library."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    server, door = base | requirement_names(extras["server"]), base | requirement_names(extras["door"])
    assert not server & set(DOOR_ONLY.values())
    assert not door & {name for name in SERVER_ONLY.values() if name}
    assert set(DOOR_ONLY.values()) <= door and {"qrcode", "http-ece", "py-vapid"} <= server


def test_the_wheel_carries_the_annotated_examples_for_init(tmp_path: Path) -> None:
    """`intercom init` and `intercom-server init` write them: a pip user has no config/ directory."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("intercom-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("intercom/examples/intercom.example.yaml") == (ROOT / "config/intercom.example.yaml").read_bytes()
        assert archive.read("intercom_server/examples/server.example.yaml") == \
            (ROOT / "config/server.example.yaml").read_bytes()
        assert archive.read("intercom_sip/examples/sip.example.yaml") == (ROOT / "config/sip.example.yaml").read_bytes()
