#!/usr/bin/env bash
# Container lifecycle and shim memory benchmark: trenv against runc.
#
#   integration/bench/lifecycle.sh [-v VERSION] [BENCH ARGS...]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#                (also TRENV_CONTAINERD_VERSION)
#   BENCH ARGS   passed to bench-lifecycle: --runs N (50), --warmup N (3), --json,
#                --namespace NS (trenv-bench), --settle-ms MS, --no-rss,
#                --no-lifecycle; --help for all
#
# Starts the private containerd of that version if it is not running
# (integration/scripts/containerd.sh), builds integration's bench-lifecycle in
# release mode and runs it with CTR and CONTAINERD_ADDRESS exported. The
# trenv shim is whatever containerd finds as containerd-shim-trenv-v1 in its
# PATH (/usr/local/bin); this script neither builds nor installs it. The
# busybox test image must have been imported (integration/scripts/build-images.sh
# import VERSION); the benchmark copies it into its own namespace.
#
# Exit status: 0 when the benchmark ran, whether or not the targets were met
# (the report says MET or MISSED); non-zero when it could not run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_bench bench-lifecycle "$@"
