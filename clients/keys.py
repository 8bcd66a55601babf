"""CURVE key files: `intentd keys` makes them, clients load theirs, the daemon loads its own.

A key pair is two `zmq.auth` certificate files: NAME.key (public, safe to copy) and
NAME.key_secret (public and secret key, readable by its owner only). The daemon admits a
client when the client's NAME.key lies in its allowed-clients directory; the client needs the
daemon's public key (the server's NAME.key) and its own NAME.key_secret.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

EXIT_OK = 0
EXIT_USAGE = 2
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


class KeyFileError(Exception):
    """A key file that is missing, unreadable or not what it should be; one line naming it."""


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in a certificate file (NAME.key or NAME.key_secret)."""
    public, _ = _load(path)
    return public


def load_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a NAME.key_secret file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key: give NAME{SECRET_SUFFIX}, not NAME{PUBLIC_SUFFIX}")
    return public, secret


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path} is not a key file made by `intentd keys`: {e}") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path} is not a key file made by `intentd keys` (no public-key line)")
    return public, secret


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to talk to a CURVE-protected daemon: its public key and our pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(
        cls, server_public_key: str | os.PathLike[str], client_key: str | os.PathLike[str]
    ) -> ClientKeys:
        """Read the daemon's NAME.key and this client's NAME.key_secret."""
        public, secret = load_key_pair(client_key)
        return cls(load_public_key(server_public_key), public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the daemon; call before connect."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def add_key_arguments(p: argparse.ArgumentParser) -> None:
    """Add --server-public-key and --client-key to a client command."""
    p.add_argument(
        "--server-public-key",
        metavar="FILE",
        help="the daemon's public key (its NAME.key), for a daemon that requires CURVE",
    )
    p.add_argument(
        "--client-key",
        metavar="FILE",
        help="this client's NAME.key_secret from `intentd keys`; its NAME.key must be in the "
        "daemon's allowed-clients directory",
    )


def keys_from_args(args: argparse.Namespace) -> ClientKeys | None:
    """The client keys named by --server-public-key/--client-key; None when neither is given."""
    server, client = args.server_public_key, args.client_key
    if server is None and client is None:
        return None
    if server is None or client is None:
        raise KeyFileError("--server-public-key and --client-key go together: give both or neither")
    return ClientKeys.load(server, client)


def create_key_pair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write DIR/NAME.key and DIR/NAME.key_secret (owner-only); never overwrites a key."""
    d = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    public, secret = d / f"{name}{PUBLIC_SUFFIX}", d / f"{name}{SECRET_SUFFIX}"
    for p in (public, secret):
        if p.exists():
            # A replaced server key locks out every client; a replaced client key, that client.
            raise KeyFileError(f"{p} already exists; remove it first or choose another --name")
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The secret file is created under a umask that keeps it owner-only from the start.
        old = os.umask(0o077)
        try:
            zmq.auth.create_certificates(d, name)
        finally:
            os.umask(old)
        os.chmod(secret, SECRET_FILE_MODE)
        os.chmod(public, PUBLIC_FILE_MODE)
    except OSError as e:
        raise KeyFileError(f"cannot write keys into {d}: {e.strerror or e}") from None
    return public, secret


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `keys` subcommand to the intentd CLI; it sets `func=run`."""
    p = subparsers.add_parser(
        "keys",
        help="make a CURVE key pair (for the daemon or for one client)",
        description="Write DIR/NAME.key (public: copy it to the other side) and DIR/NAME.key_secret "
        "(secret: stays with its owner).",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the keys options to a parser."""
    p.add_argument("directory", metavar="DIR", help="where to write the pair (created if missing)")
    p.add_argument("--name", default="server", help="file name of the pair (default server)")


def run(args: argparse.Namespace) -> int:
    """Write one key pair; returns the exit status."""
    try:
        public, secret = create_key_pair(args.directory, args.name)
    except KeyFileError as e:
        print(f"intentd keys: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m intentd_client.keys`."""
    parser = argparse.ArgumentParser(prog="intentd keys", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
