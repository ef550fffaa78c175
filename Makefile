# dino-rs: the two commands of the README.
#   make demo   train briefly on the vendored CIFAR-10 subset, export, classify, attention map
#   make test   the whole test suite (what CI runs)
#   make runtime-dist   dino-run + dino-export + ONNX Runtime as target/dist/dino-rs-runtime-*.tar.gz
#   make aarch64        the same cross-built for aarch64-unknown-linux-gnu, run under qemu-user
# Everything else (Python venv with the pinned torch/onnxruntime, the build) happens on demand.

SHELL := /bin/bash
.DEFAULT_GOAL := demo

# The venv is created once in a cache folder keyed by python/requirements.txt.
VENV := $(shell ./scripts/venv.sh)
ifeq ($(VENV),)
$(error could not create the Python venv: see the messages above)
endif
export DINO_RS_VENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export PYTHON := $(VENV)/bin/python
CARGO ?= cargo

.PHONY: build test lint demo bench fmt clean sysdeps runtime-dist aarch64
# System packages the build needs (libgloo-dev's headers for dino-dist), installed once.
sysdeps:
	./scripts/sysdeps.sh

build: sysdeps
	$(CARGO) build --release --workspace --all-targets

test: build
	$(CARGO) test --release --workspace

lint: sysdeps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The demo needs only the three binaries, not the tests.
demo: sysdeps
	$(CARGO) build --release --bins
	./scripts/demo.sh

# The runtime-only install (no Python, no torch): scripts/runtime_dist.sh builds its own binaries.
runtime-dist:
	./scripts/runtime_dist.sh

aarch64:
	./scripts/sysdeps.sh --cross-aarch64
	./scripts/cross_aarch64.sh

clean:
	$(CARGO) clean
