# Two commands on a fresh machine (Python 3.11 + gcc):  make demo   |   make test
# Everything else (venv, torch CPU wheel, the compiled core, data) is installed on the way.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip
# The CPU wheel of torch 2.13.0 lies in /opt/wheels on our machines; never let pip fall back
# to PyPI's multi-GB CUDA build of the same version.
WHEELS := $(wildcard /opt/wheels)
TORCH_PIN := torch==2.13.0
TORCH_SRC := $(if $(WHEELS),--find-links $(WHEELS),--index-url https://download.pytorch.org/whl/cpu)
DEPS   := numpy tqdm matplotlib safetensors nanobind scikit-build-core ninja cmake pytest hypothesis
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-asan test-fast build venv data bench clean

$(VENV)/.deps: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN) $(TORCH_SRC)
	$(PIP) install -q $(DEPS)
	# Triton's interpreter runs the GPU kernels' tests on the CPU; --no-deps keeps torch as is.
	$(PIP) install -q --no-deps triton || echo "warning: triton not installed; GPU-kernel tests will be skipped"
	touch $@

venv: $(VENV)/.deps

build: venv
	$(PIP) install -q --no-build-isolation --no-deps .

data:
	@test -d $(FMNIST) || (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
	  echo "warning: could not install dataset-fashion-mnist; pass --data-dir to an IDX directory")

demo: build data
	$(VPY) -m sparsecnn.cli demo

test: build data
	$(VPY) -m pytest -q -ra
	$(MAKE) test-asan

# The C++ core's own test driver, built with AddressSanitizer and UBSan.
test-asan: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DSPARSECNN_PYTHON=OFF -DSPARSECNN_TESTS=ON -DSPARSECNN_SANITIZE=ON >/dev/null
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ninja -C build/asan test_core >/dev/null
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 ./build/asan/test_core
	# again with every case of both conv kernels swept in chunks of one input channel, the shared
	# schedule (one layout all threads read) instead of the local one, and the linear layers'
	# input features in passes of 7
	SPARSECNN_LANES_CHUNK=1 SPARSECNN_PIXELS_CHUNK=1 SPARSECNN_SCHEDULE=shared SPARSECNN_LINEAR_PASS=7 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 ./build/asan/test_core

# Every benchmark behind docs/benchmarks.md, docs/perf-model.md and docs/gsl.md (quiet machine).
bench: build
	benchmarks/run_all.sh $(VPY)

clean:
	rm -rf build runs
