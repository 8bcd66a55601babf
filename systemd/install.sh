#!/usr/bin/env bash
# Install intentd as a system service: a venv under PREFIX, the unit, the example config.
#
#   sudo systemd/install.sh                      # venv in /opt/intentd, unit, config, reload
#   sudo systemd/install.sh --cuda               # plus the NVIDIA drop-in
#   systemd/install.sh --dry-run                 # print what would be done, change nothing
#   systemd/install.sh --destdir /tmp/stage --no-venv   # stage unit+config (packaging, tests)
#
# Options:
#   --prefix DIR        install root of the venv and demo model (default /opt/intentd)
#   --destdir DIR       prepend DIR to every installed path; implies no systemctl calls
#   --python PY         interpreter for the venv (default python3, needs >= 3.11)
#   --torch-index URL   extra pip index for torch, e.g. https://download.pytorch.org/whl/cpu
#                       (PyPI's default Linux x86_64 torch wheel pulls the CUDA libraries)
#   --cuda              install systemd/intentd-cuda.conf as a drop-in
#   --no-venv           skip the venv (the unit then needs one made some other way)
#   --dry-run           print the commands instead of running them
#
# An existing /etc/intentd/intentd.toml is never overwritten. Nothing is enabled or started:
# the last lines printed say how.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/intentd
DESTDIR=""
PYTHON=python3
TORCH_INDEX=""
CUDA=0
VENV=1
DRY_RUN=0
DEFAULT_PREFIX=/opt/intentd

die() { echo "install.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --torch-index) TORCH_INDEX=${2:?--torch-index needs a URL}; shift 2 ;;
        --cuda) CUDA=1; shift ;;
        --no-venv) VENV=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ $PREFIX == /* ]] || die "--prefix must be an absolute path, got $PREFIX"
# systemd unit files take the path literally: no spaces or specifiers.
[[ $PREFIX =~ ^[A-Za-z0-9_./-]+$ ]] || die "--prefix may hold only letters, digits and _./-"
[[ -z $DESTDIR || $DESTDIR == /* ]] || DESTDIR=$(pwd)/$DESTDIR

UNIT_DIR=$DESTDIR/etc/systemd/system
CONF_DIR=$DESTDIR/etc/intentd
ROOT_PREFIX=$DESTDIR$PREFIX

run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# The unit names /opt/intentd; another prefix is substituted in ExecStart= and INTENTD_MODEL=.
install_unit() {
    local dest=$UNIT_DIR/intentd.service
    run install -d -m 0755 "$UNIT_DIR"
    if [[ $DRY_RUN == 1 ]]; then
        echo "+ sed 's|$DEFAULT_PREFIX/|$PREFIX/|g' $SRC/systemd/intentd.service > $dest"
    else
        sed "s|$DEFAULT_PREFIX/|$PREFIX/|g" "$SRC/systemd/intentd.service" > "$dest.tmp"
        chmod 0644 "$dest.tmp"
        mv -f "$dest.tmp" "$dest"
    fi
    if [[ $CUDA == 1 ]]; then
        run install -d -m 0755 "$UNIT_DIR/intentd.service.d"
        run install -m 0644 "$SRC/systemd/intentd-cuda.conf" "$UNIT_DIR/intentd.service.d/cuda.conf"
    fi
}

install_config() {
    if [[ -e $CONF_DIR/intentd.toml ]]; then
        echo "keeping existing $CONF_DIR/intentd.toml (example: $SRC/systemd/intentd.toml)"
        return
    fi
    run install -d -m 0755 "$CONF_DIR"
    run install -m 0644 "$SRC/systemd/intentd.toml" "$CONF_DIR/intentd.toml"
}

install_venv() {
    local venv=$ROOT_PREFIX/.venv
    local pip_args=(-q install)
    [[ -n $TORCH_INDEX ]] && pip_args+=(--extra-index-url "$TORCH_INDEX")
    run install -d -m 0755 "$ROOT_PREFIX"
    run "$PYTHON" -m venv "$venv"
    run "$venv/bin/python" -m pip -q install --upgrade pip
    # Not editable: the service must not depend on this checkout staying where it is.
    run "$venv/bin/python" -m pip "${pip_args[@]}" "$SRC[daemon]"
    if [[ -d $SRC/models/demo ]]; then
        # The config's empty model.path means $INTENTD_MODEL, which the unit points here.
        run install -d -m 0755 "$ROOT_PREFIX/models"
        run cp -r "$SRC/models/demo" "$ROOT_PREFIX/models/demo"
    else
        echo "note: $SRC/models/demo not found; set model.path in the config" >&2
    fi
    # /opt is read-only to the service (ProtectSystem=strict), so compile now, once.
    run "$venv/bin/python" -m compileall -q "$venv/lib"
    # The service runs as a dynamic user: everything must be world-readable.
    run chmod -R u+rwX,go+rX,go-w "$ROOT_PREFIX"
}

if [[ $VENV == 1 ]]; then
    if [[ -n $DESTDIR ]]; then
        # A venv's scripts hard-code their own path, so one built under DESTDIR is broken
        # once moved; packagers build it at its final path or pass --no-venv.
        die "--destdir needs --no-venv (a venv cannot be relocated)"
    fi
    install_venv
fi
install_unit
install_config

# /run/systemd/system exists only when systemd is PID 1 (sd_booted(3)); containers skip this.
if [[ -z $DESTDIR ]] && [[ $DRY_RUN == 1 || -d /run/systemd/system ]]; then
    run systemctl daemon-reload
    run systemd-analyze verify "$UNIT_DIR/intentd.service"
fi

echo "installed; start with: systemctl enable --now intentd && journalctl -fu intentd"
