#!/usr/bin/env bash
# The README's install: what a fresh machine needs for the project and its tests. Debian's chromium and OSMesa first
# (the web page's browser tests drive chromium through Playwright, which downloads no browser; Meta-World renders
# headless through OSMesa; pip cannot install either), then the pinned CPU torch, then the project with its dev
# extras. Run it inside the environment to install into.
set -euo pipefail
cd "$(dirname "$0")"

# install_debian PACKAGE PRESENT-CHECK WHY: apt-get install PACKAGE unless the check finds it
install_debian() {
    if eval "$2" >/dev/null 2>&1; then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: $1 is missing and there is no apt-get; install $1 with your system's" \
             "package manager ($3), then run install.sh again" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

install_debian chromium "command -v chromium" "the browser tests need it"
install_debian libosmesa6 '[[ "$(ldconfig -p)" == *libOSMesa* ]]' "Meta-World renders headless through OSMesa"
python -m pip install torch==2.13.0  # the CPU build CI uses; on a GPU machine install your torch, then the next line
python -m pip install -e ".[dev]"
