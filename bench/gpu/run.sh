#!/usr/bin/env bash
# On the GPU host, in the repository's root: install (bench/gpu/install.sh), then the gpu-marked tests and the
# GPU benchmark; each step's output goes to $OUT as it runs (what a cut-off call leaves still comes back).
# BENCH: bench/serve_gpu.py's flags (default: ResNet-50 at 1 and 128 clients with paired lone windows and the
# platform's floor under a lone request, server on cores 0-11, client on 12-15; and the tiny model's ceiling over
# gRPC and HTTP at 128 and 256 in flight, server on 0-7, client on 8-15: on 4 cores perf_analyzer's HTTP client was
# the limit, docs/server-measured.md, thirty-second session).
# SKIP_TESTS=1 skips pytest. WAITS=1 samples where the servers' threads ran and how long they waited for a core
# (bench/thread_waits.py, on core 15 at nice 19) into $OUT/waits.txt and reports it per server in
# $OUT/waits-report.txt. Why 128 too: with small requests bounded (the GPU default since the twenty-ninth
# session) the server answers HTTP at 256 in flight faster than perf_analyzer's HTTP client can count on 4 cores
# (the client is killed after --client-timeout and says so; docs/server-measured.md, twenty-eighth session).
# The tiny model alone:
#   SKIP_TESTS=1 BENCH="--skip-resnet --skip-inprocess --tiny-concurrency 128,256 --tiny-protocols grpc,http
#     --tiny-server-cores 0-7 --tiny-client-cores 8-15 --client-timeout 45" bash /root/gpu/run/run.sh
# The tiny model with a race-detecting trtop-http beside the plain one:
#   SKIP_TESTS=1 BENCH="--skip-resnet --skip-inprocess --tiny-concurrency 128,256 --tiny-protocols grpc,http
#     --server-arg=--http-frontend=native --client-timeout 45
#     --config \"race=PATH=/root/gpu/race:/root/gpu/bin:\$PATH\"" bash /root/gpu/run/run.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
bash /root/gpu/run/install.sh 2>&1 | tail -3 | tee "$OUT/install.txt"
export PATH=/root/gpu/bin:$PATH  # trtop-http: the server's default (--http-frontend auto) then runs native front-ends, as in its image
# trtop-http with the race detector, for a configuration that puts it first (--config race=PATH=/root/gpu/race:$PATH ...)
if [[ -e /root/gpu/bin/trtop-http-race.xz ]]; then
  mkdir -p /root/gpu/race && xz -dc /root/gpu/bin/trtop-http-race.xz > /root/gpu/race/trtop-http && chmod +x /root/gpu/race/trtop-http
fi
nvidia-smi --query-gpu=name,driver_version,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
if [[ -z ${SKIP_TESTS:-} ]]; then
  PYTHONPATH=/tmp/tsite:/tmp/site:$PWD/operator:$PWD timeout 300 python3 -m pytest -m gpu -v -rs -p no:cacheprovider \
    tests/gpu tests/serve/test_gpu.py tests/convert/test_tensorrt_gpu.py > "$OUT/pytest-gpu.txt" 2>&1
  tail -4 "$OUT/pytest-gpu.txt"
fi
BENCH=${BENCH:-"--concurrency 1,128 --paired-rounds 3 --tiny-concurrency 128,256 --tiny-protocols grpc,http --client-timeout 45
  --tiny-server-cores 0-7 --tiny-client-cores 8-15"}
eval "bench_args=($BENCH)"  # the shell's words: a quoted --config value keeps its several flags together
if [[ -n ${WAITS:-} ]]; then  # each server thread's cores and wait for a core, sampled on the client's last core
  nice -n 19 taskset -c 15 python3 bench/thread_waits.py sample "$OUT/waits.txt" 3600 & sampler=$!
fi
PYTHONPATH=/tmp/site:$PWD/operator python3 -u bench/serve_gpu.py --out /tmp/bench-out --window-ms 2000 \
  --client own --client-procs 4 --client-cores 12-15 --server-cores 0-11 --server-arg=--max-queue-size=4096 \
  "${bench_args[@]}" > "$OUT/bench.txt" 2>&1
if [[ -n ${WAITS:-} ]]; then
  kill "$sampler" 2>/dev/null
  python3 bench/thread_waits.py report "$OUT/waits.txt" > "$OUT/waits-report.txt" 2>&1
fi
cp /tmp/bench-out/serve-gpu.json "$OUT/" 2>/dev/null
# the servers' logs, one file (state dumps of a client that did not finish: --client-timeout)
(cd /tmp/bench-out && compgen -G "*.log" > /dev/null && tar -cJf "$OUT/server-logs.tar.xz" ./*.log)
sed -n '/^In-process ONNX Runtime CUDA/,$p' "$OUT/bench.txt"
