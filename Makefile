# `make demo` and `make test` are the two entry points; both set everything up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libportaudio2 libsndfile1 ffmpeg espeak-ng flite sox alsa-utils systemd gcc pkg-config libzmq3-dev libcjson-dev
STAMP := $(VENV)/.installed
# `sudo make install`: the service venv under PREFIX, the unit and /etc/intentd/intentd.toml.
# INSTALL_FLAGS passes more systemd/install.sh options, e.g. --cuda, --dry-run,
# --torch-index https://download.pytorch.org/whl/cpu (see systemd/install.sh --help).
PREFIX ?= /opt/intentd
INSTALL_FLAGS ?=

.PHONY: setup apt demo test lint clean install

setup: apt $(STAMP)

# Installs the system libraries only when one is missing, so a ready machine skips apt.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/intentd demo

test: setup lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q --durations=10

lint: setup
	$(VENV)/bin/ruff check daemon training clients tests bench

install:
	bash systemd/install.sh --prefix $(PREFIX) $(if $(DESTDIR),--destdir $(DESTDIR) --no-venv) $(INSTALL_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info
