#!/usr/bin/env bash
# The README's install: what a fresh machine needs for the project and its tests. Debian's chromium first (the
# web page's browser tests drive it through Playwright, which downloads no browser; pip cannot install it),
# then the pinned CPU torch, then the project with its dev extras. Run it inside the environment to install into.
set -euo pipefail
cd "$(dirname "$0")"

install_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: chromium is missing and there is no apt-get; install chromium with your system's" \
             "package manager (the browser tests need it), then run install.sh again" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

install_chromium
python -m pip install torch==2.13.0  # the CPU build CI uses; on a GPU machine install your torch, then the next line
python -m pip install -e ".[dev]"
