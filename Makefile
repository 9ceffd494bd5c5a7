# Set-up and checks for vision-kernels. Every target creates the virtual environment and
# installs what it needs on a fresh machine.
#
#   make demo       vision-kernels demo into ./demo_output (pictures + benchmark table)
#   make test       build, emulated CUDA kernels under TSan/ASan, mypy, then the pytest suite
#   make bench      python benchmarks/run.py (full sizes) into ./bench_output
#   make sanitize   only the sanitizer runs of the emulated CUDA kernels
#   make dev        editable install for development (incremental C++ rebuilds in build/dev)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=
PYTEST_ARGS ?=
EMU_TIMEOUT ?= 1200

BIN := $(VENV)/bin
DEPS := $(VENV)/.vk-deps

.PHONY: demo test bench sanitize install dev clean

$(DEPS):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install cmake ninja
	touch $@

# Builds the wheel (CPU kernels, CUDA kernels when nvcc is on PATH, the emulation module) and
# installs it with every optional dependency the demo and tests use.
install: $(DEPS)
	$(BIN)/pip install ".[test]"

dev: $(DEPS)
	$(BIN)/pip install scikit-build-core pybind11
	$(BIN)/pip install --no-build-isolation -e ".[test]" -Cbuild-dir=build/dev

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

bench: install
	$(BIN)/python benchmarks/run.py --json bench_output/benchmarks.json --markdown bench_output/benchmarks.md

clean:
	rm -rf build demo_output bench_output
