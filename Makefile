# Two commands do all the set-up on a fresh machine (Python 3.11 + Java 17):
#   make demo   — venv, install, synthetic catalog, train, encode, quality summary
#   make test   — venv, install, the whole test suite (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg constraints.txt | cksum | cut -d' ' -f1)
PY     := $(abspath $(VENV))/bin/python
# Spark workers must run the venv's interpreter, not whatever python3 is on PATH.
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)
# Airflow (for the DAG test) in its own venv: its pins must not move the project's.
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-$(shell cat constraints-airflow.txt | cksum | cut -d' ' -f1)

.PHONY: demo test install check-java bench clean
.PHONY: airflow dist

install: $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ] || { \
	  echo "error: java not found. Spark 4 needs Java 17+: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)" >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1); \
	  [ -z "$$v" ] || [ "$$v" -ge 17 ] || { echo "error: Java $$v found; Spark 4 needs Java 17+" >&2; exit 1; }

$(STAMP): setup.cfg constraints.txt | check-java
	@[ -x "$(PY)" ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,report]'
	rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	$(VENV)/bin/sid-spark demo --output demo_out $(ARGS)

test: $(STAMP) $(AIRFLOW_STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf demo_out .pytest_cache build *.egg-info

airflow: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): constraints-airflow.txt
	@[ -x "$(AIRFLOW_VENV)/bin/python" ] || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -c constraints-airflow.txt apache-airflow apache-airflow-providers-apache-spark
	rm -f $(AIRFLOW_VENV)/.installed-*; touch $@

# The package as operators ship it: dist/sid_spark-<version>.whl, and the same archive as dist/sid_spark.zip
# for `spark-submit --py-files` (Spark puts only .zip/.egg/.jar py-files on the executors' sys.path).
dist: $(STAMP)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	cp "$$(ls -t dist/sid_spark-*.whl | head -n1)" dist/sid_spark.zip
