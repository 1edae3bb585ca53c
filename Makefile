# stream-pose: two commands on a fresh clone with only Python and pip.
#   make demo   train the student on the built-in synthetic stream (CPU, < 10 min)
#   make test   run the whole test suite
# Set PYTHON to choose the interpreter (3.10-3.12) and TORCH to keep your own torch build,
# e.g. `make demo TORCH=torch` on a Mac or a CUDA machine.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= mediapipe,pretrained,export,serve,ray,dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# One pip call resolves everything together: mediapipe pins numpy<2 and protobuf<5.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m train.train

test: $(STAMP)
	$(PY) -m pytest tests

clean-venv:
	rm -rf $(VENV)
