#!/bin/sh
# Debian's packages of the cluster-service tests: SLURM and munge (tests/test_slurm.py) and
# PostgreSQL (tests/test_tracking_server.py). `make test` runs this: as root on Debian it
# installs what is missing with apt-get; elsewhere it says so, and those tests skip (in CI,
# CI=true, they fail instead). Nothing is started here: the tests start their own daemons.
set -u
PACKAGES="munge slurmctld slurmd slurm-client postgresql"

missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_services.sh: not root on Debian: not installing$missing;" \
         "the slurm and tracking_server tests will skip" >&2
    exit 0
fi
echo "install_services.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; }; then
    echo "install_services.sh: apt-get could not install$missing;" \
         "the slurm and tracking_server tests will skip (fail in CI)" >&2
fi
exit 0
