#!/usr/bin/env bash
# The real functions (integration/functions/) through a small function platform: starts
# (runc.v2 cold + CNI, vanilla CRIU restore, trenv template restore in a fresh and in a
# repurposed sandbox, and from a shared shim's reserve), the memory of ten instances, and
# workloads W1, W2 and a trace shaped like the Azure Functions 2019 dataset with the
# node's memory over time (docs/benchmarks.md, "Real functions").
#
#   integration/bench/functions.sh [-v VERSION] [BENCH ARGS...]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#   BENCH ARGS   passed to bench-functions: --functions a,b (all), --modes a,c,d,e,f (all),
#                --runs N (30), --instances N (10), --skip-starts, --skip-memory,
#                --workloads w1,w2,trace|none (all), --max N (10), --keep-alive S (10),
#                --bursts N (8), --burst-gap S (6), --trace-minutes N (30),
#                --minute-secs S (4), --trace-per-minute N (8), --trace-csv FILE,
#                --seed N (1), --namespace NS (trenv-bench-fn),
#                --out DIR (/tmp/trenv-bench-functions), --json
#
# Uses the installed shim and trenv CLI (integration/setup.sh installs both; set TRENV_CLI
# to use another trenv), the CNI network trenv-fn and the template pool; builds (if
# needed) and imports the function images first (integration/scripts/build-images.sh
# import VERSION; a no-op once done). Writes report.json, one NAME-memory.svg per workload
# and trace-invocations.csv into the --out directory.
# Exit status: 0 when the benchmark ran, whether or not the targets were met.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# The real functions' images are benchmark fixtures that setup.sh leaves out.
version="${TRENV_CONTAINERD_VERSION:-2}"
if [[ "${1:-}" == "-v" && $# -ge 2 ]]; then
    version="$2"
fi
"$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
"$TRENV_REPO/integration/scripts/build-images.sh" import "$version"
run_bench bench-functions "$@"
