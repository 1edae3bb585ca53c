# stream-pose: two commands on a fresh clone with only Python and pip.
#   make demo   train the student on the built-in synthetic stream (CPU, < 10 min)
#   make test   run the whole test suite (and builds CoMotion's environment beside it)
#   make comotion-env   CoMotion's own environment (.venv-comotion), for its integration test
# Set PYTHON to choose the interpreter (3.10-3.12) and TORCH to keep your own torch build,
# e.g. `make demo TORCH=torch` on a Mac or a CUDA machine.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= mediapipe,pretrained,export,serve,ray,dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-venv comotion-env

$(PY):
	$(PYTHON) -m venv $(VENV)

# One pip call resolves everything together: mediapipe pins numpy<2 and protobuf<5.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m train.train

# CoMotion's environment builds in the background while the suite runs (the suite averages ~1.2 of
# 2 cores busy, and the build is mostly unpacking wheels); its integration test runs last and
# waits for the build. Where the build fails, that test skips quoting .comotion-env.log.
test: $(STAMP)
	@rm -f .comotion-env.status
	@{ $(MAKE) --no-print-directory comotion-env >.comotion-env.log 2>&1; \
		echo $$? >.comotion-env.status; } & echo $$! >.comotion-env.pid
	$(PY) -m pytest tests

# CoMotion (../ml-comotion) in a venv of its own: its code needs torchvision, timm 1.0.13 and
# transformers 4.48, which do not import beside the CPU torch of .venv. CoMotion pins torch 2.5.1;
# any torch with its matching torchvision runs it. The default is the pair this machine's pip
# takes from its disk (a CUDA build, ~5.5 GB, runs on the CPU too); on a Mac or aarch64 Linux:
# COMOTION_TORCH="torch==2.9.1 torchvision==0.24.1". scenedetect 0.7 changed an API CoMotion
# calls; coremltools converts the detection stage (labeler/comotion_coreml.py).
# CoMotion's code: the ml-comotion/ submodule, or ../shared/ml-comotion where it is not checked
# out; put on the path by a .pth file (an editable install would write into that tree).
COMOTION_VENV ?= .venv-comotion
COMOTION_TORCH ?= torch==2.14.1 torchvision==0.29.1
COMOTION_PINS := timm==1.0.13 transformers==4.48.0 einops pypose tensordict "scenedetect<0.7" \
	scipy coremltools
COMOTION_SRC ?= $(if $(wildcard ml-comotion/src/comotion_demo),ml-comotion,../shared/ml-comotion)
CMPY := $(COMOTION_VENV)/bin/python
CMSTAMP := $(COMOTION_VENV)/.installed

$(CMSTAMP): pyproject.toml Makefile
	@test -d "$(COMOTION_SRC)/src/comotion_demo" || { echo "no CoMotion code: run \
		git submodule update --init ml-comotion (or set COMOTION_SRC)"; exit 1; }
	$(PYTHON) -m venv $(COMOTION_VENV)
	$(CMPY) -m pip install $(COMOTION_TORCH) $(COMOTION_PINS) -e ".[pretrained,dev]"
	$(CMPY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], \
		'comotion_demo.pth').write_text('$(abspath $(COMOTION_SRC))/src\n')"
	$(CMPY) -c "import torchvision.ops, timm, transformers, einops, pypose, tensordict, \
		scenedetect, coremltools, comotion_demo; print('CoMotion environment ready')"
	touch $@

comotion-env: $(CMSTAMP)

clean-venv:
	rm -rf $(VENV)
