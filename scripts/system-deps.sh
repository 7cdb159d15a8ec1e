#!/usr/bin/env bash
# Install the Debian packages the product and its tests use, when they are missing, and start the
# Docker engine for the container tests. With arguments, only the named groups: postgres, docker,
# browser, audio. Safe to run again: it installs nothing that is already there.
set -euo pipefail

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(postgres audio docker browser)

packages=()
want() { dpkg -s "$1" >/dev/null 2>&1 || packages+=("$1"); }

for group in "${groups[@]}"; do
  case "$group" in
    postgres) want postgresql ;;
    audio) want espeak-ng ;;
    docker) want docker.io; want busybox-static; want docker-compose ;;
    browser) want chromium; want chromium-driver ;;
    *) echo "Unknown group '$group'. Use postgres, docker, browser or audio." >&2; exit 2 ;;
  esac
done

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing Debian packages: ${packages[*]}. Install them with: sudo apt-get install ${packages[*]}" >&2
    exit 1
  fi
  echo "Installing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

for group in "${groups[@]}"; do
  [ "$group" = docker ] && bash "$(dirname "$0")/start-dockerd.sh"
done
exit 0
