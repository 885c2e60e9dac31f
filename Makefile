# Two commands for a newcomer: `make test` and `make bench`. Both install what is missing,
# build the extension against the installed torch, then run.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.11.0
HIP_ARCHS ?= gfx90a gfx940
HIPCC ?= hipcc
HIP_BUILD := build/hip-check
# Debian's AMD toolchains for the ISA gates (tests/test_amd_isa.py): hipcc 5.2 (gfx90a, gfx940),
# clang/LLVM 19 (gfx942, gfx1100, gfx1201) and 22 (gfx950). Compile only.
AMD_PACKAGES := hipcc clang-19 lld-19 llvm-19 clang-22 lld-22 llvm-22
AMD_TOOLS := hipcc clang++-19 llvm-as-19 clang++-22 llvm-as-22 llvm-mca-22

EMU_TARGETS ?= gfx90a,gfx942,gfx950,gfx1100,gfx1201

.PHONY: deps emu-deps amd-toolchains build test emu-test bench hip-check amd-isa gpu-check clean

# torch from PyPI (its CUDA 13 build, matching nvcc 13); kept if some torch is already there.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	@$(PYTHON) -c "import setuptools, wheel, ninja, pytest, numpy" 2>/dev/null || \
		$(PIP) install setuptools wheel ninja pytest numpy

# The AMD wavefront emulator's toolchain (tests/test_emu_*.py): Debian's clang 19 and Boost.Context.
emu-deps:
	@command -v clang++-19 >/dev/null && test -e /usr/include/boost/context/detail/fcontext.hpp || \
		(apt-get update && apt-get install -y --no-install-recommends clang-19 lld-19 llvm-19 libboost-context-dev)

# Installs the AMD toolchains where one is missing and apt-get can (root); without them the
# ISA gates skip, except under CI=true, where they fail.
amd-toolchains:
	@missing=$$(for t in $(AMD_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "installing the AMD toolchains (missing: $$(echo $$missing))"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				$(AMD_PACKAGES) >/dev/null; \
		else \
			echo "AMD toolchains missing ($$(echo $$missing)): apt-get install $(AMD_PACKAGES)"; \
		fi; \
	fi

build: deps
	$(PIP) install --no-build-isolation --no-deps -e .

test: build emu-deps amd-toolchains
	$(PYTHON) -m pytest -q tests

# The AMD kernels compiled for and run in the wavefront emulator only (no extension build), e.g.
# `make emu-test EMU_TARGETS=gfx942`: compiled and emulated, not run on AMD hardware.
emu-test: emu-deps
	@$(PYTHON) -c "import torch, pytest" 2>/dev/null || $(MAKE) deps
	FA_EMU_TARGETS=$(EMU_TARGETS) $(PYTHON) -m pytest -q tests/test_emu_emulator.py tests/test_emu_attention.py \
		tests/test_emu_amd_headers.py

# bench_llm.py needs transformers 5 (it switches a built model between attention implementations).
bench: build
	@$(PYTHON) -c "import tqdm, matplotlib" 2>/dev/null || $(PIP) install tqdm matplotlib
	@$(PYTHON) -c "import transformers; assert int(transformers.__version__.split('.')[0]) >= 5" 2>/dev/null || \
		$(PIP) install "transformers>=5"
	$(PYTHON) benchmarks/bench_attention.py
	$(PYTHON) benchmarks/bench_llm.py

# Compiles the kernel library (no torch) for AMD GPUs with Debian's hipcc: compile only, never
# run here. -O1 keeps the check quick.
hip-check: amd-toolchains
	@mkdir -p $(HIP_BUILD)
	@$(PYTHON) tools/generate_kernels.py --amd-fp8 --out-dir $(HIP_BUILD)/generated | \
		xargs -P $$(nproc) -I{} sh -c 'echo "hipcc $(HIP_ARCHS:%=--offload-arch=%) $$(basename {})" && \
			$(HIPCC) -x hip -std=c++17 -O1 -Werror $(HIP_ARCHS:%=--offload-arch=%) -I csrc/kernels -c {} \
			-o $(HIP_BUILD)/$$(basename {} .cu).o' || (echo "hip-check: FAILED"; exit 1)
	@echo "hip-check: the kernel library compiles for $(HIP_ARCHS) (compile only, not run)"

# The ISA report over every head dim and dtype for every AMD target (device assembly at -O3,
# cached in build/amd-isa): rewrites docs/amd_isa_report.md. Compile only, never run.
amd-isa: amd-toolchains
	$(PYTHON) tools/amd_isa_report.py --head-dims all --dtypes all --out docs/amd_isa_report.md

# For the lent GPU machine: build there, run the GPU tests and the benchmark, logs under $OUT.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build csrc/generated flash_attn_rocm/*.so *.egg-info
