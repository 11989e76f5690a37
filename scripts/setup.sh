#!/usr/bin/env bash
# Set up a fresh machine, idempotently: system packages, the virtual environment, the project,
# and the cached downloads/builds of the local stack (Kafka jars, FerretDB).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11+ is needed (python3 is $(python3 --version))" >&2; exit 1; }

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v patch >/dev/null || missing+=(patch)  # applies our FerretDB patches
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium fonts-liberation)  # the UI tests drive a real browser
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ! command -v mongod >/dev/null && ! command -v go >/dev/null; then
  echo "Neither mongod nor Go is installed: FerretDB is built with Go 1.22+" >&2; exit 1
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Please install: ${missing[*]} (e.g. sudo apt-get install -y ${missing[*]})" >&2; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# Kafka's jars (Maven) and FerretDB (Go), cached by version outside the repository.
.venv/bin/enrollment-pipeline stack install
