#!/usr/bin/env bash
# Install sparkjax on every worker: git and Python 3.11 if missing, clone or update the checkout ~/sparkjax at
# BRANCH, create or reuse the venv ~/sparkjax_venv, pip install -e ".[tpu]". Safe to run again (after a push).
#
# usage: launch_tpu/setup.sh --name NAME --zone ZONE --repo GIT_URL [--branch main] [--python python3.11]
#                            [--project P] [--dry-run]
#   --repo     a URL every worker can clone: a public https URL, or one with a read token
# Each flag can also come from the environment: TPU_NAME, ZONE, REPO_URL, BRANCH, PYTHON, PROJECT, DRY_RUN=1.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "--repo --branch --python" "$@"
check_tpu
check_setup
tpu_ssh all "$(remote_script setup REPO_URL BRANCH PYTHON)"
