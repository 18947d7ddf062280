#!/usr/bin/env bash
# Start latency and memory of the Python function: cold starts (runc, trenv) against
# restores from a copy template (vanilla CRIU restore) and a mapped template (trenv).
#
#   integration/bench/templates.sh [-v VERSION] [BENCH ARGS...]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#   BENCH ARGS   passed to bench-templates: --runs N (30), --instances N (10),
#                --mb N (200), --namespace NS (trenv-bench), --skip-latency,
#                --skip-memory, --skip-cri, --concurrent N (10; 0 skips),
#                --concurrent-rounds N (3), --burst N (0; 50 for issue 15),
#                --burst-functions N (5), --burst-rounds N (3), --json
#
# Uses the installed shim and trenv CLI (integration/setup.sh installs both; set
# TRENV_CLI to use another trenv), the pyfn test image (build-images.sh import) and
# the template pool (a tmpfs at /run/trenv/pool, mounted by setup.sh).
# Exit status: 0 when the benchmark ran, whether or not the targets were met.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_bench bench-templates "$@"
