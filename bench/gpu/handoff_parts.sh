#!/usr/bin/env bash
# On the GPU host after staging (run from the repository's root): ResNet-50 servers with --slot-handoff on, each
# with one part of it left out (bench/trace_batches/sitecustomize.py: TRTOP_GAPS_NO_LAND, _KEEP_SWITCH, _NO_WAIT),
# beside the default and the whole setting, alternating round by round (ROUNDS), at CONC clients.
#   bash /root/gpu/run/install.sh stage && ROUNDS="1 2" CONC=2,64 bash bench/gpu/handoff_parts.sh
set -uo pipefail
P="PYTHONPATH=$PWD/bench/trace_batches:/tmp/site:$PWD/operator"
B=""
for r in ${ROUNDS:-1 2}; do
  B="$B --config \"off$r=--slot-handoff=off\" --config \"on$r=--slot-handoff=on\""
  for part in NO_LAND KEEP_SWITCH NO_WAIT; do
    B="$B --config \"${part,,}$r=$P TRTOP_GAPS_$part=1 --slot-handoff=on\""
  done
done
SKIP_TESTS=1 BENCH="--concurrency ${CONC:-2,64} --paired-rounds 0 --floor-seconds 0 --skip-tiny --skip-inprocess --baseline 5215,1.03 $B" \
  bash /root/gpu/run/run.sh > /dev/null
grep -E "^trtop serve|^\| [0-9]+ \| own " "${OUT:-/tmp/gpu-out}/bench.txt"
