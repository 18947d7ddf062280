#!/usr/bin/env bash
# Metering overhead and peak accuracy benchmark of trenv.
#
#   integration/bench/meter.sh [-v VERSION] [BENCH ARGS...]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#                (also TRENV_CONTAINERD_VERSION)
#   BENCH ARGS   passed to bench-meter: --intervals LIST (0,10000,1000), --runs N (30),
#                --cpu-reps N (5), --hold-s S (5), --peak-runs K (10), --phases P,
#                --namespace NS (trenv-meterbench), --trenv-runtime R; --help for all
#
# Starts the private containerd of that version if it is not running
# (integration/scripts/containerd.sh), builds integration's bench-meter in
# release mode and runs it with CTR and CONTAINERD_ADDRESS exported. The trenv
# shim is whatever containerd finds as containerd-shim-trenv-v1 in its PATH
# (/usr/local/bin), or the absolute path given with --trenv-runtime; this script
# neither builds nor installs it. The busybox test image must have been
# imported (integration/scripts/build-images.sh import VERSION); gcc builds the
# static test program (integration/tests/fixtures/memphase.c).
#
# Exit status: 0 when the benchmark ran; non-zero when it could not run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_bench bench-meter "$@"
