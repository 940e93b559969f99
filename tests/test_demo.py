"""`make demo` as a new user meets it: it prints the web app's address and an invite link, and
the bell rings the browser from the terminal (Enter) and from the door panel page."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from intercom_sim.browser import BROWSER_ARGS, CHROMIUM, GRANT_MICROPHONE
from intercom_sim.harness import Door, Process

from .test_webapp import Phone, playwright_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_the_demo_prints_an_invite_and_rings_the_browser_from_the_terminal_and_the_panel(tmp_path: Path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "intercom_sim.demo", "--out", str(tmp_path / "demo"), "--port", "0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    demo = Process("demo", proc, tmp_path / "demo-stderr.log")
    try:
        await demo.wait_for_line(lambda line: line.startswith("Press Enter to ring the bell"), 60)
        text = "\n".join(demo.lines)
        invite = re.search(r"Invite link:\s+(\S+#invite=\S+)", text)
        panel = re.search(r"Door panel:\s+(\S+)", text)
        assert invite and panel, text
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*BROWSER_ARGS, GRANT_MICROPHONE])
            try:
                assert proc.stdin is not None
                door = Door("frontdoor", demo, tmp_path / "demo" / "frontdoor.yaml", tmp_path / "demo" / "frontdoor.sock")
                # Before anyone signed in, a press rings nobody, and the demo says so.
                proc.stdin.write(b"\n")
                await demo.wait_for_line(lambda line: line.strip() == "ding dong, but nobody is signed in yet: open "
                                         "the invite link (it rings no phone until then)", 30)
                # The door rings on: a phone that signs in meanwhile is rung.
                context = await browser.new_context()
                alice = Phone("alice", await context.new_page(), invite.group(1).split("/#")[0])
                await alice.sign_in(invite.group(1))
                await alice.page.locator("#ring-screen").wait_for(state="visible", timeout=15000)
                # A press while it rings is ignored by the door, and the demo says why.
                proc.stdin.write(b"\n")
                await demo.wait_for_line(lambda line: line.strip() == "the door ignored the press: the door is "
                                         "already in a call (ringing)", 30)
                await alice.page.locator("#decline").click()
                await alice.page.locator("#ring-screen").wait_for(state="hidden", timeout=5000)
                await door.wait_status(lambda s: s["state"] == "idle")

                proc.stdin.write(b"\n")  # Enter rings the bell
                await alice.page.locator("#ring-screen").wait_for(state="visible", timeout=15000)
                await demo.wait_for_line(lambda line: line.strip() == "ding dong: the door is calling, 1 device(s) "
                                         "ringing", 30)
                await alice.page.locator("#decline").click()
                await alice.page.locator("#ring-screen").wait_for(state="hidden", timeout=5000)
                await door.wait_status(lambda s: s["state"] == "idle")

                door_panel = await context.new_page()
                await door_panel.goto(panel.group(1))
                await door_panel.locator("text=Ring the bell").click()
                await alice.page.locator("#ring-screen").wait_for(state="visible", timeout=15000)
                assert "State\ncalling" in await door_panel.locator("dl").inner_text()  # the door is ringing out
            finally:
                await browser.close()
        proc.stdin.write(b"q\n")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await demo.stop()
