"""Debian's kamailio on loopback: a registrar with digest authentication (401 for REGISTER,
407 for INVITE) that forks a call to every phone registered under one name, as a PBX or a
FritzBox does; and fixed routes standing in for a trunk's numbers (sipp's scripted phones)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .postgres import free_port

MODULES = ("tm", "sl", "rr", "pv", "maxfwd", "usrloc", "registrar", "textops", "siputils", "xlog", "sanity", "auth",
           "kex", "corex")


def _config(port: int, passwords: dict[str, str], routes: dict[str, str]) -> str:
    modules = "\n".join(f'loadmodule "{name}.so"' for name in MODULES)
    known = "\n".join(f'    if ($au == "{user}") {{ $var(pw) = "{password}"; }}' for user, password in passwords.items())
    fixed = "\n".join(f'    if ($rU == "{user}") {{ $du = "sip:{address}"; t_relay(); exit; }}' for user, address in routes.items())
    return f"""#!KAMAILIO
debug=2
log_stderror=yes
memdbg=5
memlog=5
children=2
tcp_children=1
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{port}
alias="127.0.0.1:{port}"
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
{modules}
modparam("usrloc", "db_mode", 0)
modparam("rr", "append_fromtag", 1)
modparam("registrar", "max_expires", 120)
modparam("registrar", "min_expires", 1)

route[PASSWORD] {{
    $var(pw) = "";
{known}
}}

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        if (is_method("BYE|INFO") && lookup("location")) {{ t_relay(); exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    route(PASSWORD);
    if (is_method("REGISTER")) {{
        if ($var(pw) == "" || !pv_www_authenticate("$td", "$var(pw)", "0")) {{ www_challenge("$td", "0"); exit; }}
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if ($var(pw) == "" || !pv_proxy_authenticate("$fd", "$var(pw)", "0")) {{ proxy_challenge("$fd", "0"); exit; }}
        consume_credentials();
        record_route();
    }}
{fixed}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""


class Kamailio:
    """One registrar on its own port; `stop()` and `start()` again for an outage (registrations
    are kept in memory only, so a restarted registrar has forgotten every phone)."""

    def __init__(self, workdir: Path, passwords: dict[str, str], routes: dict[str, str] | None = None) -> None:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        assert Path(binary).exists(), "kamailio not found: `make test` installs Debian's kamailio package"
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = workdir / "kamailio.cfg"
        self.config.write_text(_config(self.port, passwords, routes or {}))
        self.log = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr[-2000:]
        (self.workdir / "kamailio.pid").unlink(missing_ok=True)
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([self.binary, "-DD", "-E", "-f", str(self.config), "-Y", str(self.workdir),
                                      "-P", str(self.workdir / "kamailio.pid"), "-w", str(self.workdir)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while b"INFO: <core> [core/udp_server.c" not in self.log.read_bytes()[mark:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kamailio did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
