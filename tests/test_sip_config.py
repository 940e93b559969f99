"""The gateway's YAML and command line, as an installer meets them: the annotated example,
one line per mistake with its path and line, and nothing started on a bad file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from intercom_protocol.yamlconfig import ConfigError
from intercom_sim.sipsite import SIP_GATEWAY
from intercom_sip.config import SipConfig
from intercom_sip.gateway import allowed, identity

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIP_GATEWAY, *args], capture_output=True, text=True, timeout=60)


def test_init_writes_the_annotated_example_and_it_checks_out_once_its_secrets_exist(tmp_path):
    path = tmp_path / "etc" / "sip.yaml"
    result = _run("--config", str(path), "init")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == (ROOT / "config" / "sip.example.yaml").read_text()
    assert _run("--config", str(path), "init").returncode == 1  # never over an existing file
    checked = _run("--config", str(path), "check-config")
    # The example names files the installer makes: the password and the resident's token.
    assert checked.returncode == 2
    assert "sip.password_file: cannot read" in checked.stderr and "phones[0].access_token_file: cannot read" in checked.stderr


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "token").write_text("tok\n")
    path = tmp_path / "sip.yaml"
    path.write_text(text)
    return path


GOOD = """\
server:
  url: ws://127.0.0.1:8080/v1/ws
sip:
  user: "620"
  domain: fritz.box
  password: secret
door: front-door
open_code: "*1"
phones:
  - name: dect
    resident: anna
    access_token_file: {token}
    dial: "**9"
    callers: ["**610"]
  - name: mobile
    resident: anna
    access_token_file: {token}
    dial: "+491701234567"
"""


def test_a_good_file_reads_and_a_phone_number_needs_its_key(tmp_path):
    config = SipConfig.from_file(_config(tmp_path, GOOD.format(token=tmp_path / "token")))
    dect, mobile = config.phones
    assert (dect.device_id, dect.target, dect.answer_key, dect.access_token) == ("sip-dect", "**9", None, "tok")
    assert (mobile.target, mobile.answer_key) == ("+491701234567", "1")
    assert config.gateway.open_code == "*1" and config.account.codecs == ("g722", "pcmu", "pcma", "opus")


@pytest.mark.parametrize(("change", "error"), [
    (("dial: \"**9\"", "dial: 620"), "phones[0].dial (line 13): must be a string, not 620 (in quotes:"),
    (("open_code: \"*1\"", "open_code: \"1x\""), "open_code (line 8): must be DTMF keys"),
    (("  domain: fritz.box", "  domian: fritz.box"), "sip.domian (line 5): unknown key; did you mean 'domain'?"),
    (("name: mobile", "name: dect"), "phones[1].name: 'dect' names two phones"),
    (("door: front-door\n", ""), "door: is required when a phone has callers"),
])
def test_each_mistake_is_one_line_with_its_path(tmp_path, change, error):
    text = GOOD.format(token=tmp_path / "token").replace(*change)
    with pytest.raises(ConfigError) as caught:
        SipConfig.from_file(_config(tmp_path, text))
    assert error in str(caught.value), str(caught.value)
    result = _run("--config", str(tmp_path / "sip.yaml"), "check-config")
    assert result.returncode == 2 and error in result.stderr and "Traceback" not in result.stderr


def test_a_missing_file_names_the_init_command(tmp_path):
    result = _run("--config", str(tmp_path / "none.yaml"), "run")
    assert result.returncode == 2 and "intercom-sip --config" in result.stderr and " init" in result.stderr


def test_callers_are_matched_by_user_or_by_user_at_host():
    assert identity('"Anna" <sip:**610@fritz.box:5060>;tag=1') == ("**610", "fritz.box")
    assert allowed("sip:**610@fritz.box", ("**610",))
    assert allowed("<sip:611@fritz.box>", ("sip:611@fritz.box",))
    assert not allowed("sip:611@evil.example", ("sip:611@fritz.box",))
    assert not allowed("sip:6110@fritz.box", ("611",))
