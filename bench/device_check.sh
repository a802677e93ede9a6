#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU, sized to fit a few minutes:
#
#   make device-wheels            # here: the pure-Python wheels that GPU image lacks -> .whl/
#   OUT=results bash bench/device_check.sh   # there, in the repository root
#
# It uses that machine's own python3 and torch (a CUDA build), installs the carried wheels
# (gymnasium and what it needs beyond the image) into a scratch folder, then
#   1. prints the GPU and torch versions,
#   2. runs the population tests that exercise the device (K=1 equals dqn.train there,
#      refilled slots, a failing loss),
#   3. runs bench/bench_population.py --device cuda: K = 1024, 2048, 4096 distinct losses,
#      4096 copies of DQN's loss, and the 256-256 network against the GPU's dense mm rate,
#      with the machine's own CPU baseline in the same run,
# writing everything under $OUT (gpu.txt, tests.log, bench.log, performance_gpu.json).
# DEVICE=cpu DEVICE_KS=64,128 smoke-tests the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-device-results}
DEVICE=${DEVICE:-cuda}
DEVICE_KS=${DEVICE_KS:-1024,2048,4096}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/evorl-site .whl/*.whl
  export PYTHONPATH="/tmp/evorl-site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_population.py -k "device or k1" \
  2>&1 | tee "$OUT/tests.log"
python3 bench/bench_population.py --ks 1,8 --steps 300 --device "$DEVICE" --device-ks "$DEVICE_KS" \
  --json "$OUT/performance_gpu.json" 2>&1 | tee "$OUT/bench.log"
