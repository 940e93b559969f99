"""The README's "Set up a door", run as written: from an empty directory to a door that rings Alice.

The commands come from the README's code blocks, so the README, the example configs and the
programs cannot drift apart. What this machine cannot do as an installer would, the test does
openly, and only that:
- the installation lives under a temporary root: /etc/intercom, /etc/systemd/system,
  /var/lib/intercom-server and /run/intercom in commands and example files are moved under it
  (INTERCOM_CONFIG points the door's commands at the moved YAML, as it would for an
  installation kept elsewhere);
- there is no systemd running here: `useradd` and `systemctl daemon-reload` are left out, and
  `systemctl enable --now intercom-server` runs the ExecStart line of the unit the walkthrough
  copied, from this checkout's venv instead of /opt/intercom/venv, as this user;
- "edit it" is done as an installer would: the server listens on any free port (port 0; the
  links must then carry the port it really got), and the door's `hardware:` gets the simulated
  backends, since this machine has no GPIO, Pi camera or sound card;
- the placeholder link after `intercom pair` is the one `door add` printed, and Alice's phone
  is the command-line resident signed in with her invite link.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from intercom_sim.harness import RESIDENT, Door, Process

ROOT = Path(__file__).resolve().parent.parent
PLACES = ("/etc/intercom", "/etc/systemd/system", "/var/lib/intercom-server", "/var/lib/intercom", "/run/intercom")
#: Where the units expect the programs.
INSTALLED = "/opt/intercom/venv/bin/"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def walkthrough() -> list[list[str]]:
    """The commands of every sh block in the README's "Set up a door", comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Set up a door\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [argv for block in blocks for line in block.splitlines() if (argv := shlex.split(line, comments=True))]


class Walkthrough:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "r"  # short: the control socket's path has a length limit
        self.cwd = tmp_path / "checkout"
        self.cwd.mkdir()
        (self.cwd / "systemd").symlink_to(ROOT / "systemd")  # the units, as in a checkout
        Path(self.moved("/etc/systemd/system")).mkdir(parents=True)  # there on any machine with systemd
        self.logs = tmp_path / "logs"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
                    "INTERCOM_CONFIG": self.moved("/etc/intercom/intercom.yaml")}
        self.background: list[Process] = []
        self.links: dict[str, str] = {}

    def moved(self, text: str) -> str:
        for place in PLACES:
            text = re.sub(rf"(?<![\w/]){re.escape(place)}(?=/|\b)", str(self.root) + place, text)
        return text

    async def run(self, argv: list[str]) -> tuple[str, str]:
        """A command that ends; its stdout and stderr."""
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.cwd, env={**os.environ, **self.env}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}"
        assert b"Traceback" not in err, err.decode()
        return out.decode(), err.decode()

    async def start(self, name: str, argv: list[str]) -> Process:
        process = await Process.start(name, argv, self.logs, env={**self.env})
        self.background.append(process)
        return process

    def exec_start(self, unit: str) -> list[str]:
        """What systemd would run for the unit the walkthrough installed: its ExecStart line."""
        installed = Path(self.moved(f"/etc/systemd/system/{unit}.service"))
        assert installed.read_text() == (ROOT / "systemd" / installed.name).read_text()
        [line] = [line for line in installed.read_text().splitlines() if line.startswith("ExecStart=")]
        argv = shlex.split(line.split("=", 1)[1])
        assert argv[0].startswith(INSTALLED), argv
        return [str(Path(sys.executable).parent / argv[0][len(INSTALLED):]), *map(self.moved, argv[1:])]

    def edit_server_yaml(self, path: Path) -> None:
        text = self.moved(path.read_text())
        text, edits = re.subn(r"(?m)^(  port:) 8080\b", r"\1 0", text)
        assert edits == 1, "the example's listen.port moved: update the walkthrough's edit"
        path.write_text(text)

    def edit_door_yaml(self, path: Path) -> None:
        """The installer's wiring, simulated: each backend this machine has no hardware for."""
        text = self.moved(path.read_text())
        for old, new in ((r"(    backend:) lgpio\b", r"\1 mock"), (r"(    backend:) picamera2\b", r"\1 test_pattern"),
                         (r"(    backend:) alsa\b", r"\1 tone"),
                         (r"(  speaker:\n(?:    #.*\n)*    device:) default\b", r'\1 "null"')):
            text, edits = re.subn(old, new, text)
            assert edits == 1, f"the example's hardware changed ({old}): update the walkthrough's edit"
        path.write_text(text)

    async def close(self) -> None:
        for process in reversed(self.background):
            await process.stop()


async def sign_in_alice(site: Walkthrough, invite: str) -> Process:
    """What the web app does with the invite link, then a phone that waits for the bell."""
    base, code = invite.split("/#invite=")
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/invites/redeem", json={"code": code}) as r:
        assert r.status == 201, await r.text()
        signed_in: dict[str, Any] = await r.json()
    token_file = site.root / "alice-phone.token"
    token_file.write_text(signed_in["access_token"])
    ws_url = base.replace("http://", "ws://") + "/v1/ws"
    phone = await site.start("alice-phone", [*RESIDENT, "--server", ws_url, "--user", "alice",
                                             "--token-file", str(token_file), "--answer", "ignore"])
    await phone.wait_for_event("online", timeout=60)
    return phone


async def test_the_readme_walkthrough_pairs_a_door_that_rings_alice(tmp_path: Path) -> None:
    commands = walkthrough()
    assert [c[:2] for c in commands if c[0] == "intercom"][:2] == [["intercom", "init"], ["intercom", "pair"]], commands
    assert ["systemctl", "enable", "--now", "intercom-server"] in commands, commands
    site = Walkthrough(tmp_path)
    phone: Process | None = None
    door: Door | None = None
    try:
        for argv in commands:
            argv = [site.moved(arg) for arg in argv]
            if argv[0] == "intercom" and argv[1] == "pair":
                argv = [*argv[:2], site.links["pair"], *argv[3:]]
            if argv[0] == "useradd" or argv[:2] == ["systemctl", "daemon-reload"]:
                continue  # no systemd here, and the test's user runs the server
            if argv[:3] == ["systemctl", "enable", "--now"]:
                server = await site.start("server", site.exec_start(argv[3]))
                line = await server.wait_for_line(lambda line: line.startswith("intercom-server listening on "), 60)
                site.links["server"] = line.rsplit(" ", 1)[1]
                continue
            if argv[:2] == ["intercom", "run"]:
                process = await site.start("door", argv)
                door = Door("frontdoor", process, Path(site.env["INTERCOM_CONFIG"]),
                            Path(site.moved("/run/intercom/control.sock")))
                await door.wait_status(lambda s: s["server"]["connected"], timeout=60)
                continue
            if argv[:3] == ["intercom", "ctl", "press"]:
                assert phone is not None, "the walkthrough presses the bell before Alice has a phone"
                await site.run(argv)
                incoming = await phone.wait_for_event("incoming", timeout=30)
                assert incoming["caller"]["user_id"] == "frontdoor", incoming
                assert incoming["caller"]["display_name"] == "Front door"
                continue
            output, notes = await site.run(argv)
            words = argv[argv.index("--config") + 2:] if "--config" in argv else argv[1:]  # the subcommand on
            if argv[0] == "intercom-server" and words[0] == "init":
                site.edit_server_yaml(Path(argv[argv.index("--config") + 1]))
            elif argv[:2] == ["intercom", "init"]:
                site.edit_door_yaml(Path(site.env["INTERCOM_CONFIG"]))
            elif argv[0] == "intercom-server" and words[0] == "invite":
                site.links["invite"] = re.search(r"\S+/#invite=\S+", output).group(0)  # type: ignore[union-attr]
                # No public_url: the link says so, and carries the port the server really got.
                assert "public_url is not set" in notes
                assert site.links["invite"].startswith(site.links["server"] + "/#invite=")
                phone = await sign_in_alice(site, site.links["invite"])
            elif argv[0] == "intercom-server" and words[:2] == ["door", "add"]:
                site.links["pair"] = re.search(r"http\S+/#pair=[\w-]+", output).group(0)  # type: ignore[union-attr]
                assert site.links["pair"].startswith(site.links["server"] + "/#pair=")
            elif argv[1:3] == ["ctl", "status"]:
                status = json.loads(output)
                assert status["server"]["connected"] and status["server"]["user_id"] == "frontdoor", status
            elif argv[1] == "selftest":
                report = json.loads(output)
                assert report["ok"] and report["ring_groups"]["residents"] == ["alice", "bob"], report
            elif argv[1] == "pair":
                token = Path(site.moved("/etc/intercom/token"))
                assert stat.S_IMODE(token.stat().st_mode) == 0o600
                assert "the server accepted the door's token" in output
                door_yaml = Path(site.env["INTERCOM_CONFIG"]).read_text()
                server_url = site.links["pair"].split("/#")[0].replace("http://", "ws://") + "/v1/ws"
                assert f"url: {server_url}\n" in door_yaml and "user_id: frontdoor\n" in door_yaml
                assert "# This door station's user on the server." in door_yaml  # comments kept
        assert door is not None and phone is not None and "pair" in site.links
    finally:
        await site.close()
