"""The systemd unit, its CUDA drop-in, the example config and install.sh, checked by systemd's tools."""

from __future__ import annotations

import ctypes.util
import dataclasses
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from intentd import config

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "intentd.service"
EXAMPLE_CONFIG = SYSTEMD_DIR / "intentd.toml"
INSTALL_SH = SYSTEMD_DIR / "install.sh"
MAX_EXPOSURE = 2.0
# Where the distribution keeps its own units; verify needs sysinit.target and friends.
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")
TOOL_TIMEOUT_S = 60

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian/Ubuntu package: systemd)"
)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _exec_binaries(unit_text: str) -> list[str]:
    """Absolute program paths of every Exec*= line (after systemd's -@:+! prefixes)."""
    out = []
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in EXEC_KEYS and value.strip():
            out.append(value.strip().lstrip("-@:+!").split()[0])
    return out


def _settings(unit_text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit_text.splitlines():
        if line.startswith(("#", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), "--destdir", str(root), "--no-venv", *extra],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root where install.sh put the unit and drop-in, with stub binaries for Exec*= lines.

    `systemd-analyze verify` refuses a unit whose ExecStart= binary is missing, so checking
    the shipped unit on a machine without the install needs its own --root.
    """
    system_units = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if system_units is None:
        pytest.skip("no systemd unit directory with sysinit.target on this machine")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    result = _install(root, "--cuda")
    assert result.returncode == 0, result.stderr
    for binary in _exec_binaries(UNIT.read_text()):
        stub = root / binary.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


@needs_analyze
def test_installed_unit_and_drop_in_verify_clean(scratch_root: Path) -> None:
    result = _analyze("verify", f"--root={scratch_root}", "intentd.service")
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert result.stderr.strip() == ""
    assert result.stdout.strip() == ""


@needs_analyze
def test_verify_in_the_scratch_root_does_catch_mistakes(scratch_root: Path) -> None:
    # Guards the check above against passing vacuously (wrong root, unit not loaded).
    dropins = scratch_root / "etc/systemd/system/intentd.service.d"
    (dropins / "typo.conf").write_text("[Service]\nProtectSytem=strict\n")
    result = _analyze("verify", f"--root={scratch_root}", "intentd.service")
    assert "ProtectSytem" in result.stderr
    (dropins / "typo.conf").unlink()
    (scratch_root / "opt/intentd/.venv/bin/intentd").unlink()
    result = _analyze("verify", f"--root={scratch_root}", "intentd.service")
    assert result.returncode != 0
    assert "/opt/intentd/.venv/bin/intentd" in result.stderr


def _exposure(*args: str) -> float:
    result = _analyze("security", "--offline=true", *args)
    assert result.returncode == 0, result.stderr
    m = re.search(r"Overall exposure level for intentd\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert m, result.stdout[-2000:]
    return float(m.group(1))


@needs_analyze
def test_exposure_score_is_at_most_two() -> None:
    exposure = _exposure(str(UNIT))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"


@needs_analyze
def test_exposure_with_the_cuda_drop_in_is_at_most_two(scratch_root: Path) -> None:
    exposure = _exposure(f"--root={scratch_root}", "intentd.service")
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"


def test_unit_keeps_the_settings_the_daemon_relies_on() -> None:
    s = _settings(UNIT.read_text())
    # notify.Notifier's contract: READY=1 from the main PID, watchdog pings, SIGHUP reload.
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["TimeoutStartSec"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"] == ["/opt/intentd/.venv/bin/intentd run --config /etc/intentd/intentd.toml"]
    assert s["DeviceAllow"] == ["char-alsa rw"]
    assert s["DevicePolicy"] == ["closed"]
    # Known traps: these look like free hardening but break capture or torch.
    assert s.get("PrivateDevices", ["no"]) == ["no"]  # hides /dev/snd
    assert s.get("MemoryDenyWriteExecute", ["no"]) == ["no"]  # oneDNN JIT, cffi callbacks
    assert s.get("ProcSubset", ["all"]) == ["all"]  # torch's cpuinfo needs /proc/cpuinfo
    assert s.get("PrivateNetwork", ["no"]) == ["no"]  # subscribers use loopback tcp


def test_example_config_loads_and_documents_every_key() -> None:
    cfg = config.load(EXAMPLE_CONFIG)
    assert cfg == config.Config(), "the example should show the defaults"
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    text = EXAMPLE_CONFIG.read_text().splitlines()
    for section in dataclasses.fields(config.Config):
        keys = {f.name for f in dataclasses.fields(getattr(cfg, section.name))}
        assert set(data[section.name]) == keys, f"[{section.name}] keys differ from the loader"
        for key in keys:
            i = next(n for n, line in enumerate(text) if line.startswith(f"{key} = "))
            assert text[i - 1].startswith("#"), f"{section.name}.{key} has no comment above it"


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--dry-run", "--prefix", str(tmp_path / "opt")],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "-m venv" in result.stdout
    assert "daemon-reload" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_install_keeps_an_existing_config_and_rewrites_the_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc/intentd/intentd.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('[model]\ndevice = "cpu"\n')
    result = _install(root, "--prefix", "/srv/intentd")
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == '[model]\ndevice = "cpu"\n'
    unit = (root / "etc/systemd/system/intentd.service").read_text()
    assert _settings(unit)["ExecStart"][0].startswith("/srv/intentd/.venv/bin/intentd ")
    assert "/opt/intentd/" not in unit
    assert not (root / "etc/systemd/system/intentd.service.d").exists()


def test_install_refuses_a_venv_under_destdir(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--destdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "--no-venv" in result.stderr


# Applies what RestrictAddressFamilies= does (socket() of any other family fails with
# EAFNOSUPPORT) through libseccomp, then binds the publisher's default endpoint like the daemon.
_FAMILY_FILTER_SCRIPT = """
import ctypes, errno, os, sys
import zmq
lib = ctypes.CDLL(sys.argv[1])
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
SCMP_ACT_ALLOW, SCMP_CMP_EQ, SCMP_CMP_GT = 0x7FFF0000, 4, 6
deny = ctypes.c_uint32(0x00050000 | errno.EAFNOSUPPORT)
allowed = {int(f) for f in sys.argv[2].split()}
lib.seccomp_init.restype = ctypes.c_void_p
ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(SCMP_ACT_ALLOW)))
nr = lib.seccomp_syscall_resolve_name(b"socket")
rules = [(SCMP_CMP_GT, max(allowed))]
rules += [(SCMP_CMP_EQ, f) for f in range(max(allowed)) if f not in allowed]
for op, family in rules:
    assert lib.seccomp_rule_add_array(ctx, deny, nr, 1, (Cmp * 1)(Cmp(0, op, family, 0))) == 0
assert lib.seccomp_load(ctx) == 0
ctx_ = zmq.Context()
pub = ctx_.socket(zmq.PUB)
pub.bind(sys.argv[3])
print("bound", pub.getsockopt_string(zmq.LAST_ENDPOINT))
pub.close(0)
ctx_.term()
"""


def _bind_under_family_filter(families: list[str]) -> subprocess.CompletedProcess[str]:
    libseccomp = ctypes.util.find_library("seccomp")
    if libseccomp is None:
        pytest.skip("libseccomp not installed (Debian/Ubuntu package: libseccomp2)")
    numbers = " ".join(str(int(socket.AddressFamily[f])) for f in families)
    endpoint = "tcp://127.0.0.1:0"  # the default endpoint's address, any free port
    return subprocess.run(
        [sys.executable, "-c", _FAMILY_FILTER_SCRIPT, libseccomp, numbers, endpoint],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


def test_allowed_address_families_let_zeromq_bind_loopback() -> None:
    families = _settings(UNIT.read_text())["RestrictAddressFamilies"][0].split()
    result = _bind_under_family_filter(families)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bound tcp://127.0.0.1:")


def test_without_netlink_zeromq_aborts_on_bind() -> None:
    # Why AF_NETLINK is in the unit: libzmq asserts when getifaddrs() gets EAFNOSUPPORT.
    result = _bind_under_family_filter(["AF_UNIX", "AF_INET", "AF_INET6"])
    # Should this start failing after a pyzmq upgrade, libzmq stopped asserting there and
    # AF_NETLINK may be dropped from the unit again.
    assert result.returncode != 0
    assert "Address family not supported" in result.stderr
