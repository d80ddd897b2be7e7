# shellcheck shell=bash
# Runs on every TPU worker, as the ssh command that ../setup.sh builds: that command starts with REPO_URL=, BRANCH=
# and PYTHON= lines, then this text without its comments. Do not run it on your own machine.
# Idempotent: each step looks before it acts, so running it again only updates the checkout and the install.
set -euo pipefail
cd ~
# A fresh VM's unattended upgrades hold the dpkg lock for minutes: wait for it instead of failing.
apt_install() {
  sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@"
}
command -v git >/dev/null || apt_install git
# setup.py needs Python >= 3.11, and the TPU images (Ubuntu 22.04) ship 3.10: add it, with venv, when missing.
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || apt_install "$PYTHON" "$PYTHON-venv"
if [ -d sparkjax/.git ]; then
  git -C sparkjax remote set-url origin "$REPO_URL"
  git -C sparkjax fetch -q origin "$BRANCH"
  # Every worker must run the same code: move to exactly the fetched commit (fails, keeping them, on local edits).
  git -C sparkjax checkout -q -B "$BRANCH" FETCH_HEAD
else
  git clone -q --branch "$BRANCH" "$REPO_URL" sparkjax
fi
# The venv sits beside the checkout, so a fresh clone keeps it.
[ -x sparkjax_venv/bin/python ] || "$PYTHON" -m venv sparkjax_venv
cd sparkjax
../sparkjax_venv/bin/python -m pip install -q -e ".[tpu]"
echo "worker $(hostname): sparkjax $BRANCH at $(git rev-parse --short HEAD), installed in ~/sparkjax_venv"
