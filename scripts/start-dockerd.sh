#!/usr/bin/env bash
# Start a Docker engine with the vfs storage driver when none responds, and wait until one does.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "No Docker engine responds, and starting one needs root. Start dockerd, or set DOCKER_HOST." >&2
  exit 1
fi

log=/var/log/homunculy-nb-dockerd.log
echo "Starting dockerd (vfs storage driver), log in $log"
nohup dockerd --storage-driver vfs >"$log" 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not respond within 30 s. Its log:" >&2
tail -n 30 "$log" >&2
exit 1
