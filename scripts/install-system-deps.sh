#!/usr/bin/env bash
# Installs the system tools the test suite uses, when missing: DCMTK (real DICOM peers),
# dicom3tools (dciodvfy), PostgreSQL (a throwaway cluster per test session) and promtool (from the
# `prometheus` package: checks the alert rules and Prometheus config in config/prometheus).
# Only as root (apt-get); otherwise it says what is missing and leaves the machine alone.
set -euo pipefail

missing=()
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]} (run 'make install' as root, or install them with your package manager)" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
