"""Capture devices as PortAudio lists them, and finding the one a config names.

PortAudio (through sounddevice) is imported only when a microphone is wanted, so WAV replay and
the tests that need no device run where libportaudio is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from intentd.errors import AudioDeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputDevice:
    """A capture device as PortAudio lists it."""

    index: int
    name: str
    max_input_channels: int
    default_rate_hz: float
    host_api: str


def portaudio() -> Any:
    """Import sounddevice (which initialises PortAudio) only when a microphone is wanted."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError when libportaudio is missing
        raise AudioDeviceError(
            f"cannot load PortAudio ({e}); install libportaudio2 to capture from a microphone"
        ) from e
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """Every device PortAudio can capture from, in PortAudio's index order."""
    sd = portaudio()
    apis = [api["name"] for api in sd.query_hostapis()]
    return [
        InputDevice(
            index=i,
            name=d["name"],
            max_input_channels=int(d["max_input_channels"]),
            default_rate_hz=float(d["default_samplerate"]),
            host_api=apis[d["hostapi"]] if 0 <= d["hostapi"] < len(apis) else "?",
        )
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


def _describe(devices: list[InputDevice]) -> str:
    """One line listing input devices for an error message."""
    if not devices:
        return "no input devices found"
    return "input devices: " + "; ".join(f"[{d.index}] {d.name}" for d in devices)


def find_input_device(device: str | int | None) -> InputDevice:
    """Resolve a device index, name substring (case-insensitive) or None (the default input)."""
    devices = list_input_devices()
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)
    if device is None:
        sd = portaudio()
        default_index = sd.default.device[0]
        if default_index is None or default_index < 0:
            default_index = next(iter(d.index for d in devices), -1)
        matches = [d for d in devices if d.index == default_index]
        what = "default input device"
    elif isinstance(device, int):
        matches = [d for d in devices if d.index == device]
        what = f"input device index {device}"
    else:
        wanted = device.casefold()
        # An exact name wins over a longer name that merely contains it.
        matches = [d for d in devices if d.name.casefold() == wanted]
        matches = matches or [d for d in devices if wanted in d.name.casefold()]
        what = f"input device matching {device!r}"
    if not matches:
        raise AudioDeviceError(f"no {what}; {_describe(devices)}")
    return matches[0]
