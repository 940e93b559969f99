"""A SIP phone on another SIP stack than the gateway's (pjsua2, PJSIP's own binding), run as
its own process and driven by JSON lines: it registers, rings, answers, is busy or declines,
sends DTMF (RFC 4733 or SIP INFO), calls, plays a tone and records what it hears.

    python -m intercom_sim.pjphone --registrar 127.0.0.1:5060 --user alice --password pw --tone 400

Commands on stdin: {"do": "answer"|"busy"|"decline"|"hangup"|"dtmf"|"call"|"quit", ...}.
Events on stdout: {"event": "registered"|"incoming"|"state"|"media"|"dtmf"|"recorded", ...}.
pjsua2 is torn down calls first, then the account, then the endpoint: in any other order it
crashed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

import pjsua2 as pj

# PJSIP writes to stdout itself: the events get the original stdout, everything else stderr.
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


def emit(event: str, **body: object) -> None:
    out.write(json.dumps({"event": event, **body}) + "\n")
    out.flush()


class Phone:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.noVad = True
        self.ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.boundAddress = "127.0.0.1"
        tcfg.publicAddress = "127.0.0.1"
        tcfg.port = 0
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        wanted = args.codecs.lower().split(",") if args.codecs else []
        for codec in self.ep.codecEnum2():
            name = codec.codecId.lower()
            keep = not wanted or any(name.startswith(w) for w in wanted)
            self.ep.codecSetPriority(codec.codecId, (255 - wanted.index(next(w for w in wanted if name.startswith(w))))
                                     if keep and wanted else (128 if keep else 0))
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.user}@{args.registrar}"
        acfg.regConfig.registrarUri = f"sip:{args.registrar}"
        acfg.regConfig.timeoutSec = 60
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
        acfg.mediaConfig.srtpUse = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
                                    "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[args.srtp]
        acfg.mediaConfig.srtpSecureSignaling = 0
        self.account = Account(self)
        self.account.create(acfg)
        self.call: Call | None = None
        self.audio: pj.AudioMedia | None = None
        self.heard = False
        self.tone: pj.ToneGenerator | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.recordings = 0

    def loop(self) -> None:
        buffered = b""
        while True:
            self.ep.libHandleEvents(5)
            self.listen()
            ready, _, _ = select.select([sys.stdin], [], [], 0)
            if not ready:
                continue
            chunk = os.read(sys.stdin.fileno(), 4096)
            if not chunk:
                return
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                command = json.loads(line)
                if command["do"] == "quit":
                    return
                self.command(command)

    def command(self, c: dict[str, str]) -> None:
        do = c["do"]
        prm = pj.CallOpParam(True)
        if do == "answer":
            emit("answering", at=time.monotonic())
        if do == "call":
            self.call = Call(self, self.account)
            self.call.makeCall(c["uri"], prm)
        elif do == "register":
            self.account.setRegistration(True)
        elif self.call is None:
            emit("error", message=f"no call to {do}")
        elif do in ("answer", "busy", "decline", "ringing"):
            prm.statusCode = {"answer": 200, "busy": 486, "decline": 603, "ringing": 180}[do]
            self.call.answer(prm)
        elif do == "hangup":
            self.call.hangup(prm)
        elif do == "dtmf":
            p = pj.CallSendDtmfParam()
            p.digits = c["digits"]
            p.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if c.get("method") == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
            self.call.sendDtmf(p)

    def listen(self) -> None:
        """`hearing` once the far end's sound first arrives (its level, on PJSIP's 0-255 scale),
        stamped with the machine's monotonic clock, which every process on it shares."""
        audio = self.audio
        if audio is None or self.heard:
            return
        # PJSIP names levels from the bridge's side: what the call sends into it is "tx".
        level = audio.getTxLevel()
        if level >= 8:
            self.heard = True
            emit("hearing", level=level, at=time.monotonic())

    def media_up(self, call: Call) -> None:
        info = call.getInfo()
        for i, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = call.getAudioMedia(i)
            self.audio, self.heard = audio, False
            if self.tone is None and self.args.tone:
                self.tone = pj.ToneGenerator()
                self.tone.createToneGenerator(16000, 1)
                tone = pj.ToneDesc()
                tone.freq1 = int(self.args.tone)
                tone.freq2 = int(self.args.tone)
                tone.on_msec = 1000
                tone.off_msec = 0
                tones = pj.ToneDescVector()
                tones.append(tone)
                self.tone.play(tones, True)
            if self.tone is not None:
                self.tone.startTransmit(audio)
            if self.recorder is None:
                self.recordings += 1
                path = f"{self.args.record}.{self.recordings}.wav"
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(path)
                self.recorder.path = path
                audio.startTransmit(self.recorder)
            stream = call.getStreamInfo(i)
            emit("media", codec=stream.codecName, clock_rate=stream.codecClockRate)

    def ended(self) -> None:
        self.audio = None
        if self.recorder is not None:
            path = self.recorder.path
            del self.recorder
            self.recorder = None
            emit("recorded", path=path)

    def close(self) -> None:
        if self.call is not None:
            del self.call
            self.call = None
        self.recorder = None
        self.tone = None
        self.account.shutdown()
        del self.account
        self.ep.libDestroy()


class Account(pj.Account):
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        emit("registered" if prm.code // 100 == 2 and self.getInfo().regIsActive else "registration", code=prm.code)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = Call(self.phone, self, prm.callId)
        info = call.getInfo()
        if self.phone.call is not None:
            op = pj.CallOpParam(True)
            op.statusCode = 486
            call.answer(op)
            return
        self.phone.call = call
        emit("incoming", remote=info.remoteUri, call_id=info.callIdString)
        op = pj.CallOpParam(True)
        op.statusCode = 180
        call.answer(op)


class Call(pj.Call):
    def __init__(self, phone: Phone, account: Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.phone = phone

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        emit("state", state=info.stateText, code=info.lastStatusCode, reason=info.lastReason)
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.phone.ended()
            self.phone.call = None

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.phone.media_up(self)

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        emit("dtmf", digit=prm.digit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registrar", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--tone", type=float, default=400.0)
    parser.add_argument("--codecs", default="")
    parser.add_argument("--srtp", choices=("off", "optional", "mandatory"), default="off")
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    phone = Phone(args)
    try:
        phone.loop()
    finally:
        phone.close()
    emit("quit")


if __name__ == "__main__":
    main()
