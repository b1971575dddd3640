# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PY := .venv/bin/python
PIP := .venv/bin/pip
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export RECSYS_HOME ?= $(CURDIR)/.recsys
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test ui mlflow-ui screenshots clean

install: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -qq --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/recsys demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

ui: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install
	.venv/bin/mlflow ui --backend-store-uri sqlite:///$(RECSYS_HOME)/mlflow.db -h 127.0.0.1 -p 5000

# Screenshots of the Dagster UI (needs `make ui` running and Debian's chromium) into out/screenshots/.
screenshots: install
	$(PIP) install -qq -c constraints.txt -e ".[ui]"
	$(PY) scripts/screenshot.py out/screenshots http://127.0.0.1:3000/asset-groups http://127.0.0.1:3000/automation

clean:
	rm -rf .dagster_home .recsys
