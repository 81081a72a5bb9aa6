#!/bin/sh
# Installs Debian's PyTorch CPU build (python3-torch, 1.13.1 on bookworm) for
# benches/train_step.py, which runs under /usr/bin/python3. Benchmarks only:
# no test needs it.
set -eu
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-torch=1.13.1+dfsg-4
