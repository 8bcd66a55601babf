"""Who may connect: CURVE keys, exposed-bind refusal, ipc socket files, message size caps; real sockets."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from intentd import security
from intentd.config import Config, PublishConfig, SecurityConfig, SourceConfig
from intentd.errors import ConfigError
from intentd.netsource import MAX_MESSAGE_BYTES, NetSource
from intentd.publisher import MAX_INBOUND_BYTES, Publisher, Result
from intentd_client import keys as client_keys
from intentd_client.audio_protocol import StreamStart, decode_ack
from intentd_client.keys import ClientKeys
from intentd_client.protocol import IntentEvent
from intentd_client.subscriber import Subscriber

REPO = Path(__file__).resolve().parent.parent
INTENTD = REPO / ".venv" / "bin" / "intentd"
LISTEN_S = 1.5  # how long a client that should get nothing is given


def _result(i: int) -> Result:
    now = time.monotonic()
    return Result(
        source="wav:x", intent="balance", score=0.9, top_k=(("balance", 0.9),), start_s=float(i),
        end_s=i + 0.5, cut_at=now, queue_ms=1.0, inference_ms=2.0, model="tiny",
    )  # fmt: skip


@dataclass(frozen=True)
class Keys:
    """A server pair, an allowed client pair, and an intruder pair not in the allowed folder."""

    server_secret: Path
    server_public: Path
    allowed_dir: Path
    client_secret: Path
    intruder_secret: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Key pairs made by the same code as `intentd keys`."""
    server_public, server_secret = client_keys.create_key_pair(tmp_path / "server", "server")
    _, client_secret = client_keys.create_key_pair(tmp_path / "allowed", "kitchen")
    _, intruder_secret = client_keys.create_key_pair(tmp_path / "elsewhere", "intruder")
    # The allowed folder holds only public keys, as deployed; the secret goes to the client.
    moved = tmp_path / "kitchen.key_secret"
    client_secret.rename(moved)
    return Keys(server_secret, server_public, tmp_path / "allowed", moved, intruder_secret)


def _secured_config(keys: Keys, endpoint: str = "tcp://127.0.0.1:*", net: str = "") -> Config:
    return Config(
        publish=PublishConfig(endpoint=endpoint),
        source=SourceConfig(spec="none" if net else "mic", net=net),
        security=SecurityConfig(
            server_secret_key=str(keys.server_secret),
            allowed_clients_dir=str(keys.allowed_dir),
            require_curve=True,
        ),
    )


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private context: the authenticator serves the sockets of its own context only."""
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _client(keys: Keys, secret: Path) -> ClientKeys:
    return ClientKeys.load(keys.server_public, secret)


def _publish_while(pub: Publisher, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        pub.publish_heartbeat(0.0, {})
        pub.publish_intent(_result(i))
        i += 1
        time.sleep(0.02)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_command_writes_an_owner_only_secret_and_never_overwrites(tmp_path: Path, capsys) -> None:
    assert client_keys.main([str(tmp_path / "k"), "--name", "hall"]) == 0
    secret = tmp_path / "k" / "hall.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k" / "hall.key").stat().st_mode) == 0o644
    before = secret.read_bytes()
    assert client_keys.main([str(tmp_path / "k"), "--name", "hall"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert secret.read_bytes() == before
    public, secret_key = client_keys.load_key_pair(secret)
    assert client_keys.load_public_key(tmp_path / "k" / "hall.key") == public and len(secret_key) == 40


def test_a_public_key_file_is_not_a_client_key(keys: Keys) -> None:
    with pytest.raises(client_keys.KeyFileError, match="holds no secret key"):
        ClientKeys.load(keys.server_public, keys.server_public)


# --- CURVE on the publisher -----------------------------------------------------------------------


def test_only_an_allowed_client_key_receives_events(keys: Keys, ctx: zmq.Context) -> None:
    cfg = _secured_config(keys)
    with security.serving(cfg, context=ctx) as curve:
        assert curve is not None
        pub = Publisher(cfg.publish.endpoint, run_id="r", context=ctx, curve=curve)
        assert pub.socket is not None
        endpoint = pub.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        allowed = Subscriber(endpoint, context=ctx, keys=_client(keys, keys.client_secret))
        intruder = Subscriber(endpoint, context=ctx, keys=_client(keys, keys.intruder_secret))
        keyless = Subscriber(endpoint, context=ctx)
        _publish_while(pub, LISTEN_S)
        got = allowed.recv(timeout_s=1.0)
        assert isinstance(got, IntentEvent)
        for sub in (intruder, keyless):
            assert sub.recv(timeout_s=0.2) is None or sub.stats.received == 0
            assert sub.stats.received == 0
        assert curve.denied >= 1  # the intruder's handshakes reached the authenticator and failed
        for s in (allowed, intruder, keyless):
            s.close()
        pub.close()


def test_reloaded_keys_refuse_a_removed_client(keys: Keys, ctx: zmq.Context) -> None:
    cfg = _secured_config(keys)
    with security.serving(cfg, context=ctx) as curve:
        assert curve is not None
        pub = Publisher(cfg.publish.endpoint, run_id="r", context=ctx, curve=curve)
        assert pub.socket is not None
        endpoint = pub.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        client = _client(keys, keys.client_secret)
        # Another allowed key stays, so the folder is still valid after the removal.
        client_keys.create_key_pair(keys.allowed_dir, "hall")
        (keys.allowed_dir / "kitchen.key").unlink()
        curve.reload()
        late = Subscriber(endpoint, context=ctx, keys=client)
        _publish_while(pub, LISTEN_S)
        assert late.recv(timeout_s=0.2) is None and late.stats.received == 0
        late.close()
        pub.close()


def test_curve_socket_is_never_armed_without_the_authenticator(keys: Keys, ctx: zmq.Context) -> None:
    loaded = security.check(_secured_config(keys))
    assert loaded is not None
    curve = security.CurveServer(loaded, ctx)  # not started: libzmq would admit any key
    with pytest.raises(RuntimeError, match="before start"):
        Publisher("tcp://127.0.0.1:*", run_id="r", context=ctx, curve=curve)


# --- CURVE on the network audio source -------------------------------------------------------------


def _started_ack(src: NetSource, endpoint: str, ctx: zmq.Context, client: ClientKeys | None) -> bool:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if client is not None:
        client.apply(dealer)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(StreamStart("s-1", 16000, 1, "s16le").to_frames(), zmq.NOBLOCK)
    except zmq.Again:
        pass
    deadline = time.monotonic() + LISTEN_S
    while time.monotonic() < deadline:
        src.read(0.05)
        if dealer.poll(10):
            ack = decode_ack(dealer.recv_multipart())
            dealer.close()
            return ack.status == "started"
    dealer.close()
    return False


def test_net_source_takes_streams_only_from_allowed_keys(keys: Keys, ctx: zmq.Context) -> None:
    cfg = _secured_config(keys, net="tcp://127.0.0.1:*")
    with security.serving(cfg, context=ctx) as curve:
        src = NetSource("tcp://127.0.0.1:*", context=ctx, curve=curve)
        src.open()
        assert src._socket is not None
        endpoint = src._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert not _started_ack(src, endpoint, ctx, None)
        assert not _started_ack(src, endpoint, ctx, _client(keys, keys.intruder_secret))
        assert _started_ack(src, endpoint, ctx, _client(keys, keys.client_secret))
        assert src.stats()["net_streams_started"] == 1
        src.close()


# --- refusing exposed binds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "exposed"),
    [
        ("tcp://127.0.0.1:5556", False),
        ("tcp://127.8.9.10:5556", False),
        ("tcp://localhost:5556", False),
        ("tcp://lo:5556", False),
        ("tcp://[::1]:5556", False),
        ("tcp://0.0.0.0:5556", True),
        ("tcp://*:5556", True),
        ("tcp://[::]:5556", True),
        ("tcp://192.168.1.20:5556", True),
        ("tcp://eth0:5556", True),
        ("ipc:///run/intentd/events", False),
        ("inproc://events", False),
    ],
)
def test_which_endpoints_other_hosts_reach(endpoint: str, exposed: bool) -> None:
    assert security.is_exposed(endpoint) is exposed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_exposed_bind_without_keys_is_refused_before_binding(ctx: zmq.Context) -> None:
    port = _free_port()
    with pytest.raises(ConfigError, match="other hosts could connect"):
        Publisher(f"tcp://0.0.0.0:{port}", run_id="r", context=ctx)
    with pytest.raises(ConfigError, match="other hosts could connect"):
        NetSource(f"tcp://0.0.0.0:{port}", context=ctx).open()
    assert _nothing_listens(port)


@pytest.mark.parametrize(
    "args",
    [
        ["--publish", "tcp://0.0.0.0:{port}", "--source", "none", "--source", "net:ipc://{tmp}/a.sock"],
        ["--publish", "ipc://{tmp}/e.sock", "--source", "none", "--source", "net:tcp://0.0.0.0:{port}"],
    ],
)
def test_daemon_refuses_an_exposed_endpoint_without_keys(args: list[str], tmp_path: Path) -> None:
    port = _free_port()
    argv = [a.format(port=port, tmp=tmp_path) for a in args]
    started = time.monotonic()
    proc = subprocess.run(
        [str(INTENTD), "run", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "reachable from other hosts" in err[0] and "--server-key" in err[0], err
    assert time.monotonic() - started < 30  # refused before the model loads
    assert _nothing_listens(port)
    assert not list(tmp_path.iterdir())  # nothing bound at all


def test_require_curve_without_keys_is_refused() -> None:
    cfg = Config(security=SecurityConfig(require_curve=True))
    with pytest.raises(ConfigError, match="needs CURVE"):
        security.check(cfg)


# --- clients with keys, through the commands ---------------------------------------------------------


def test_listen_with_keys_prints_events_of_a_curve_daemon(keys: Keys, ctx: zmq.Context) -> None:
    cfg = _secured_config(keys)
    with security.serving(cfg, context=ctx) as curve:
        pub = Publisher(cfg.publish.endpoint, run_id="r", context=ctx, curve=curve)
        assert pub.socket is not None
        endpoint = pub.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        cmd = [sys.executable, "-m", "intentd_client.listen", endpoint, "--json"]
        key_args = ["--server-public-key", str(keys.server_public)]
        procs = {
            "allowed": subprocess.Popen(
                [*cmd, *key_args, "--client-key", str(keys.client_secret)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            "intruder": subprocess.Popen(
                [*cmd, *key_args, "--client-key", str(keys.intruder_secret)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        }
        _publish_while(pub, 4.0)
        out = {}
        for name, p in procs.items():
            p.send_signal(signal.SIGTERM)
            out[name] = p.communicate(timeout=10)[0]
        pub.close()
    assert [IntentEvent.from_json(line).intent for line in out["allowed"].splitlines()][:1] == ["balance"]
    assert out["intruder"] == ""


def test_listen_with_half_the_key_options_is_one_line_exit_2(keys: Keys) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "intentd_client.listen", "tcp://127.0.0.1:1", "--client-key", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "intentd listen: --server-public-key and --client-key go together: give both or neither"
    ]


# --- ipc socket files -----------------------------------------------------------------------------


def test_ipc_socket_is_group_only(tmp_path: Path, ctx: zmq.Context) -> None:
    pub = Publisher(f"ipc://{tmp_path}/events", run_id="r", context=ctx)
    mode = (tmp_path / "events").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    pub.close()


def test_second_daemon_refuses_a_live_ipc_path_and_the_first_keeps_serving(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    endpoint = f"ipc://{tmp_path}/events"
    first = Publisher(endpoint, run_id="first", context=ctx)
    sub = Subscriber(endpoint, context=ctx, heartbeats=True)
    with pytest.raises(ConfigError, match="another process is serving on"):
        Publisher(endpoint, run_id="second", context=ctx)
    with pytest.raises(ConfigError, match="another process is serving on"):
        NetSource(endpoint, context=ctx).open()
    # Without the check ZeroMQ would have unlinked the file: new subscribers could not find `first`.
    late = Subscriber(endpoint, context=ctx, heartbeats=True)
    for _ in range(100):
        first.publish_heartbeat(0.0, {})
        if late.tracker.ready:
            break
        late.recv(timeout_s=0.05)
    assert late.tracker.run_id == "first"
    for s in (sub, late):
        s.close()
    first.close()


def test_stale_ipc_socket_is_replaced(tmp_path: Path, ctx: zmq.Context) -> None:
    path = tmp_path / "events"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody accepts on it: what a killed daemon leaves
    assert path.exists()
    pub = Publisher(f"ipc://{path}", run_id="r", context=ctx)
    assert stat.S_ISSOCK(path.stat().st_mode)
    pub.close()


def test_ipc_path_that_is_not_a_socket_is_left_alone(tmp_path: Path, ctx: zmq.Context) -> None:
    path = tmp_path / "events"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        Publisher(f"ipc://{path}", run_id="r", context=ctx)
    assert path.read_text() == "precious"


# --- message size caps ----------------------------------------------------------------------------


def test_every_bound_socket_caps_inbound_messages(tmp_path: Path, ctx: zmq.Context) -> None:
    pub = Publisher(f"ipc://{tmp_path}/events", run_id="r", context=ctx)
    src = NetSource(f"ipc://{tmp_path}/audio", context=ctx)
    src.open()
    assert pub.socket is not None and src._socket is not None
    assert pub.socket.getsockopt(zmq.MAXMSGSIZE) == MAX_INBOUND_BYTES
    assert src._socket.getsockopt(zmq.MAXMSGSIZE) == MAX_MESSAGE_BYTES
    src.close()
    pub.close()


def test_oversized_subscription_drops_only_that_subscriber(tmp_path: Path, ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/events"
    pub = Publisher(endpoint, run_id="r", context=ctx)
    good = Subscriber(endpoint, context=ctx)
    huge = ctx.socket(zmq.SUB)
    huge.setsockopt(zmq.LINGER, 0)
    huge.setsockopt(zmq.SUBSCRIBE, b"i" * (MAX_INBOUND_BYTES * 2))
    huge.setsockopt(zmq.SUBSCRIBE, b"")  # it would get everything, were its subscriptions taken
    huge.connect(endpoint)
    _publish_while(pub, LISTEN_S)
    assert isinstance(good.recv(timeout_s=1.0), IntentEvent)
    assert not huge.poll(100)
    good.close()
    huge.close()
    pub.close()


def test_bind_checked_closes_the_socket_it_refuses(tmp_path: Path, ctx: zmq.Context) -> None:
    sock = ctx.socket(zmq.PUB)
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError):
        security.bind_checked(sock, f"ipc://{tmp_path}/f", "publish endpoint", "--publish", 1024, None)
    assert sock.closed
