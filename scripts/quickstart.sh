#!/usr/bin/env bash
# First-time set-up and the design-card run: install cnnlab, make sure Fashion-MNIST is reachable, train.
# Usage: bash scripts/quickstart.sh [extra Hydra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -e .

# Offline machines get Fashion-MNIST from Debian's package; online ones can also let torchvision download it.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
    || echo "quickstart: could not install dataset-fashion-mnist; cnnlab will try to download Fashion-MNIST"
fi

exec cnnlab train model=lenet loss=nll scheduler=exp_decay "$@"
