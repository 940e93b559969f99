"""The door's tones, synthesised: chime, ringback, nobody-answered, warning, announcement.

Plain numpy, no files to ship or lose: each tone is a mono float array at 48 kHz in [-1, 1],
scaled to the installer's volume by the speaker. The shapes follow what people already know
from telephones and doorbells, so a visitor understands them without a manual.
"""

from __future__ import annotations

import numpy as np

RATE = 48000


def _note(freq: float, seconds: float, decay: float = 0.0, harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    wave: np.ndarray = sum((a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics)), np.zeros_like(t))
    wave = wave / sum(harmonics)
    envelope = np.exp(-decay * t) if decay else np.ones_like(t)
    ramp = min(len(t), int(RATE * 0.005))  # 5 ms fades: no clicks
    envelope[:ramp] *= np.linspace(0, 1, ramp)
    envelope[-ramp:] *= np.linspace(1, 0, ramp)
    return wave * envelope


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds))


def chime() -> np.ndarray:
    """Ding-dong (E5, C5) with a bell's decaying overtones: the visitor hears the press worked."""
    bell = (1.0, 0.4, 0.2)
    return np.concatenate([_note(659.25, 0.7, 4.0, bell), _note(523.25, 1.1, 3.0, bell)])


def ringback() -> np.ndarray:
    """One cycle of the European ringback: 425 Hz, one second on, four off (played in a loop)."""
    return np.concatenate([_note(425.0, 1.0), _silence(4.0)]) * 0.7


def no_answer() -> np.ndarray:
    """Three falling notes: nobody answered."""
    return np.concatenate([np.concatenate([_note(f, 0.25), _silence(0.08)]) for f in (784.0, 659.25, 523.25)])


def warning() -> np.ndarray:
    """Two short high beeps: the call will end soon."""
    beep = _note(1000.0, 0.15)
    return np.concatenate([beep, _silence(0.15), beep])


def announce() -> np.ndarray:
    """Two rising notes: a resident is looking and listening (auto-answered call)."""
    return np.concatenate([_note(523.25, 0.2), _note(784.0, 0.35, 3.0)])


def record_beep() -> np.ndarray:
    """One long beep: speak now, the door records (after the "nobody can answer" greeting)."""
    return _note(880.0, 0.5)


def test_tone() -> np.ndarray:
    """The installer's self-test: one second of 1 kHz."""
    return _note(1000.0, 1.0)


test_tone.__test__ = False  # type: ignore[attr-defined]

TONES = {"chime": chime, "ringback": ringback, "no_answer": no_answer, "warning": warning, "announce": announce, "record_beep": record_beep,
         "test": test_tone}
