#!/usr/bin/env bash
# Installs what the project needs on a Debian/Ubuntu machine, then the project itself
# into ./.venv. Safe to run again: it only installs what is missing. Whatever stops it
# is one line starting with "setup:" that says what to do.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

need=()
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/promtool ] || need+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v git >/dev/null || need+=(git)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  # one name once, in the order found
  mapfile -t need < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')
  list="${need[*]}"
  command -v apt-get >/dev/null \
    || die "missing: $list, and this is not a Debian/Ubuntu machine (no apt-get): install them by hand"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null \
      || die "missing Debian packages: $list; run this as root, or ask an admin: apt-get install $list"
    sudo -n true 2>/dev/null \
      || echo "setup: sudo will ask for your password to install: $list" >&2
    SUDO="sudo"
  fi
  echo "setup: installing Debian packages: $list"
  log=$(mktemp "${TMPDIR:-/tmp}/aiops-setup.XXXXXX")
  export DEBIAN_FRONTEND=noninteractive
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    last=$(grep -E '^(E|W):' "$log" | tail -n 1)
    die "could not install $list (${last:-see $log}): run 'sudo apt-get update && sudo apt-get install $list' and try again"
  fi
  rm -f "$log"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv || die "python3 -m venv .venv failed: install python3-venv (apt-get install python3-venv), remove .venv and try again"
fi
if ! .venv/bin/python -c 'import aiops, detector, importlinter, pytest, ruff' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing Python packages into .venv"
  log=$(mktemp "${TMPDIR:-/tmp}/aiops-pip.XXXXXX")
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[dev]"; } >"$log" 2>&1; then
    last=$(grep -E '^ERROR' "$log" | tail -n 1)
    die "pip could not install the project into .venv (${last:-see $log}): check the network to PyPI, or remove .venv and try again"
  fi
  rm -f "$log"
  touch .venv/.installed
fi
