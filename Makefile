# `make demo` and `make test` are the two entry points; both set everything up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libportaudio2 libsndfile1 ffmpeg espeak-ng sox alsa-utils systemd gcc pkg-config libzmq3-dev libcjson-dev
STAMP := $(VENV)/.installed

.PHONY: setup apt demo test lint clean

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
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check daemon training clients tests bench

clean:
	rm -rf $(VENV) build *.egg-info
