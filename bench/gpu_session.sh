#!/usr/bin/env bash
# Everything the GPU issues need from a lent GPU machine, in as few device calls as possible:
#
#   bash bench/gpu_session.sh build   # compile with CUDA required (FASTTRAIN_CUDA=ON), build info
#   bash bench/gpu_session.sh test    # tests/test_cuda.py + the numba-cuda tests on the device
#   bash bench/gpu_session.sh bench   # python -m bench gpu: limits, our CUDA kernels, numba-cuda, torch
#   bash bench/gpu_session.sh train   # fasttrain train --device cuda, timed against the CPU run
#   bash bench/gpu_session.sh all     # the four in turn (about 10 minutes on an H100 with a cold build)
#
# Logs and results go to $OUT (the device tool brings that folder back; default gpu_out/). Each
# stage is capped so one call stays inside the tool's 10-minute limit; the build outputs stay on
# a warm machine between calls. The machine has no network: the build uses what is installed
# (pip --no-build-isolation --no-deps), as the device notes require.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
stage=${1:-all}
py=${PYTHON:-python}

run() {  # run NAME SECONDS CMD...: log to $OUT/NAME.log, print its tail and status
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc (log $OUT/$name.log)"
  tail -n 25 "$OUT/$name.log"
  return $rc
}

build() {
  { nvidia-smi; $py -V; nvcc --version; } > "$OUT/machine.txt" 2>&1
  FASTTRAIN_CUDA=ON run build 400 $py -m pip install --no-build-isolation --no-deps -e . || return 1
  run build_info 60 $py -c "import json, fasttrain as ft; print(json.dumps(ft.build_info(), indent=1)); print(ft.backends())"
}

tests() {
  run tests 500 $py -m pytest -q -rs tests/test_cuda.py tests/test_numba.py
}

bench() {
  run bench 550 $py -m bench gpu --json "$OUT/gpu.jsonl" --results "$OUT/GPU_RESULTS.md"
}

train() {
  run train_cuda 250 $py -m fasttrain train --device cuda --quiet --monitor-every 0 --no-plot --run-dir "$OUT/run_cuda"
  run train_cpu 250 $py -m fasttrain train --quiet --monitor-every 0 --no-plot --run-dir "$OUT/run_cpu"
}

case $stage in
  build) build ;;
  test) tests ;;
  bench) bench ;;
  train) train ;;
  all) build && { tests; bench; train; } ;;
  *) echo "gpu_session.sh: expected build, test, bench, train or all, got '$stage'" >&2; exit 2 ;;
esac
