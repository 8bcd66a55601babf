"""Who may connect: CURVE on tcp endpoints other hosts can reach, group-only ipc sockets, one checked bind.

With both keys configured, every tcp socket the daemon binds (loopback too, so a client uses
one key pair for all of them) is a CURVE server admitting only the public keys in
`security.allowed_clients_dir`; ipc sockets rely on file permissions instead. Without keys the
daemon refuses to start when an endpoint is reachable from other hosts (tcp not on 127.0.0.0/8,
::1 or localhost), or has any tcp endpoint while `security.require_curve` is set.

Every socket the daemon binds goes through `bind_checked`, which
- arms tcp sockets as CURVE servers when keys are configured, and refuses an exposed tcp
  endpoint when they are not (the same rule as `check`, once more right before the bind);
- refuses an ipc path another process is serving on (ZeroMQ's bind would silently unlink it),
  removes a stale one, and makes the new socket file 0660 (owner and group connect);
- sets MAXMSGSIZE, so no peer makes the daemon allocate more than the socket's largest message.

Without a running ZAP handler libzmq admits *any* CURVE client that knows the server's public
key, so `CurveServer.secure` refuses to arm a socket before `start()`, and the CLI starts the
authenticator before the first bind and stops it after the last close (see cli._run_pipeline).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from intentd.config import Config
from intentd.errors import ConfigError
from intentd_client.keys import PUBLIC_SUFFIX, KeyFileError, load_key_pair

log = logging.getLogger(__name__)

IPC_SOCKET_MODE = 0o660  # the unit's RuntimeDirectoryMode=0750 keeps others out of the folder too
IPC_PROBE_TIMEOUT_S = 1.0
LOOPBACK_NAMES = frozenset({"localhost", "lo"})
DENIED_LOG_INTERVAL_S = 60.0  # one warning per refused key per this long; the rest are counted
KEYS_HINT = "set --server-key and --allowed-clients (security.server_secret_key, .allowed_clients_dir)"


def tcp_host(endpoint: str) -> str | None:
    """The host (interface, address or name) of a tcp:// endpoint; None for other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_exposed(endpoint: str) -> bool:
    """Whether binding `endpoint` lets other hosts connect (tcp not on a loopback address)."""
    host = tcp_host(endpoint)
    if host is None:
        return False
    if host in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # "*", an interface such as eth0, or a host name: assume other hosts reach it


def needs_curve(endpoint: str, require_curve: bool) -> bool:
    """Whether binding `endpoint` needs the CURVE keys to be configured."""
    return is_exposed(endpoint) or (require_curve and tcp_host(endpoint) is not None)


def bound_endpoints(cfg: Config, publish: bool = True) -> list[tuple[str, str]]:
    """(config key, endpoint) of every socket the daemon will bind."""
    out = [("publish.endpoint", cfg.publish.endpoint)] if publish else []
    if cfg.source.net:
        out.append(("source.net", cfg.source.net))
    return out


@dataclass(frozen=True)
class ServerKeys:
    """The daemon's CURVE key pair and where the admitted clients' public keys lie."""

    public: bytes
    secret: bytes
    allowed_dir: Path


def allowed_keys(directory: Path) -> frozenset[bytes]:
    """The public keys of every NAME.key in `directory`; KeyFileError when there are none."""
    if not directory.is_dir():
        raise KeyFileError(f"allowed-clients directory {directory} does not exist or is not a directory")
    try:
        keys = frozenset(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the client keys in {directory}: {e}") from None
    if not keys:
        raise KeyFileError(
            f"no client keys (*{PUBLIC_SUFFIX}) in {directory}: nobody could connect; "
            f"add one made by `intentd keys DIR --name CLIENT`"
        )
    return keys


def check(cfg: Config, publish: bool = True) -> ServerKeys | None:
    """Refuse exposed tcp binds without keys; the loaded keys when some endpoint needs CURVE."""
    sec = cfg.security
    if bool(sec.server_secret_key) != bool(sec.allowed_clients_dir):
        raise ConfigError(f"the server key and the allowed-clients directory go together: {KEYS_HINT}")
    endpoints = bound_endpoints(cfg, publish)
    if not sec.server_secret_key:
        for key, ep in endpoints:
            if needs_curve(ep, sec.require_curve):
                why = "is reachable from other hosts" if is_exposed(ep) else "needs CURVE (require_curve)"
                raise ConfigError(f"{key} {ep} {why}: {KEYS_HINT}, or bind 127.0.0.1 or an ipc:// path")
        return None
    tcp = [ep for _, ep in endpoints if tcp_host(ep) is not None]
    if not tcp:
        log.info("CURVE keys configured but no endpoint is tcp: not used")
        return None
    try:
        public, secret = load_key_pair(sec.server_secret_key)
        allowed = allowed_keys(Path(sec.allowed_clients_dir))
    except KeyFileError as e:
        raise ConfigError(str(e)) from None
    log.info("CURVE on %s: %d allowed client key(s)", ", ".join(tcp), len(allowed))
    return ServerKeys(public, secret, Path(sec.allowed_clients_dir))


class _AllowedClients:
    """The ZAP credentials callback: admits the keys read from the directory, logs the others."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys = allowed_keys(directory)
        self.denied = 0
        self._last_logged: dict[bytes, float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        """Called in the authenticator thread for each CURVE handshake."""
        if key in self.keys:
            return True
        self.denied += 1
        now = time.monotonic()
        if now - self._last_logged.get(key, -DENIED_LOG_INTERVAL_S) >= DENIED_LOG_INTERVAL_S:
            self._last_logged[key] = now
            log.warning("refused a CURVE client whose key %s is not in %s", key.decode(), self.directory)
        return False


class CurveServer:
    """The daemon's side of CURVE: its key pair and the ZAP authenticator thread checking clients."""

    def __init__(self, keys: ServerKeys, context: zmq.Context | None = None) -> None:
        self.keys = keys
        self._context = context or zmq.Context.instance()
        self._allowed = _AllowedClients(keys.allowed_dir)
        self._auth: ThreadAuthenticator | None = None

    @property
    def denied(self) -> int:
        """Handshakes refused because the client's key is not allowed."""
        return self._allowed.denied

    def start(self) -> None:
        """Start the authenticator (a thread); before any CURVE socket binds."""
        if self._auth is not None:
            return
        auth = ThreadAuthenticator(self._context, log=logging.getLogger("intentd.zap"))
        auth.start()
        # domain "*": the sockets set no ZAP domain; a callback so refusals are logged and reload works.
        auth.configure_curve_callback(domain="*", credentials_provider=self._allowed)
        self._auth = auth

    def stop(self) -> None:
        """Stop the authenticator; only after every CURVE socket is closed."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def reload(self) -> None:
        """Re-read the allowed keys (SIGHUP); keeps the old set when the directory is broken."""
        try:
            fresh = allowed_keys(self.keys.allowed_dir)
        except KeyFileError as e:
            log.error("client keys not reloaded, keeping %d: %s", len(self._allowed.keys), e)
            return
        self._allowed.keys = fresh  # one attribute store, read by the authenticator thread
        log.info("client keys reloaded: %d allowed (connected clients stay connected)", len(fresh))

    def secure(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server; only while the authenticator runs (else libzmq admits anyone)."""
        if self._auth is None or not self._auth.is_alive():
            raise RuntimeError("CurveServer.secure() before start(): clients would not be checked")
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True


@contextmanager
def serving(
    cfg: Config, publish: bool = True, context: zmq.Context | None = None
) -> Iterator[CurveServer | None]:
    """Check the config's endpoints, then run the authenticator (if CURVE is needed) for the block."""
    keys = check(cfg, publish)
    if keys is None:
        yield None
        return
    curve = CurveServer(keys, context)
    curve.start()
    try:
        yield curve
    finally:
        curve.stop()


def bind_checked(
    sock: zmq.Socket,
    endpoint: str,
    what: str,
    flag: str,
    max_message_bytes: int,
    curve: CurveServer | None,
) -> None:
    """Bind `sock` as described in the module docstring; on failure close it and raise ConfigError."""
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if curve is not None and tcp_host(endpoint) is not None:
            curve.secure(sock)
        elif is_exposed(endpoint):
            raise ConfigError(
                f"refusing to bind {what} {endpoint}: other hosts could connect; {KEYS_HINT}, "
                "or bind 127.0.0.1 or an ipc:// path"
            )
        if endpoint.startswith("ipc://"):
            _claim_ipc_path(endpoint, what, flag)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            raise ConfigError(
                f"cannot bind {what} {endpoint}: {e.strerror}; is another intentd running? "
                f"choose another with {flag}"
            ) from None
        if endpoint.startswith("ipc://"):
            _restrict_ipc_path(sock, what)
    except BaseException:
        sock.close(linger=0)
        raise


def _ipc_path(endpoint: str) -> str | None:
    """The file of an ipc:// endpoint; None for abstract (@name) and wildcard ones."""
    path = endpoint[len("ipc://") :]
    return None if path.startswith("@") or path == "*" else path


def _claim_ipc_path(endpoint: str, what: str, flag: str) -> None:
    """Refuse a live socket or a non-socket at the path; remove a stale socket."""
    path = _ipc_path(endpoint)
    if path is None:
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot bind {what} {endpoint}: cannot check {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(
            f"cannot bind {what} {endpoint}: {path} exists and is not a socket; "
            f"remove it or choose another with {flag}"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(IPC_PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        # Nobody accepts on it: left by a daemon that died without closing. Safe to replace.
        log.info("removing stale ipc socket %s", path)
        os.unlink(path)
        return
    except OSError as e:
        raise ConfigError(
            f"cannot bind {what} {endpoint}: {path} exists and cannot be checked ({e.strerror}); "
            f"remove it or choose another with {flag}"
        ) from None
    finally:
        probe.close()
    raise ConfigError(
        f"cannot bind {what} {endpoint}: another process is serving on {path} (another intentd?); "
        f"stop it or choose another with {flag}"
    )


def _restrict_ipc_path(sock: zmq.Socket, what: str) -> None:
    """Owner and group may connect, others not (connecting needs write permission)."""
    path = _ipc_path(sock.getsockopt(zmq.LAST_ENDPOINT).decode())
    if path is not None:
        os.chmod(path, IPC_SOCKET_MODE)
        log.debug("%s socket %s is mode %o", what, path, IPC_SOCKET_MODE)
