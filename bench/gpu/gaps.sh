#!/usr/bin/env bash
# On the GPU host after staging (run from the repository's root): ResNet-50 servers at 64 clients (CONC) with the
# engine's per-batch stamps (bench/trace_batches), the gap trials of that folder's sitecustomize, alternating round by
# round (ROUNDS: their names' suffixes; ALL=0 leaves out the four trials together; on: the server's own setting);
# bench/batch_gaps.py reads each server's stamps into $OUT/gaps.txt. The first server (default, --slot-handoff on)
# runs without stamps: against "on", what stamping costs.
#   bash /root/gpu/run/install.sh stage && ROUNDS=a bash bench/gpu/gaps.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
P="PYTHONPATH=$PWD/bench/trace_batches:/tmp/site:$PWD/operator"
NAMES=""
# The trials are of the server with --slot-handoff off (the default since the thirty-ninth session is on: "on$r",
# stamped, is that); each config's words after the variables are the server's flags.
c() { NAMES="$NAMES $1"; mkdir -p /tmp/g-$1; B="$B --config \"$1=$P TRTOP_BATCH_TRACE=/tmp/g-$1 $2 ${3:---slot-handoff=off}\""; }
rm -rf /tmp/g-*; B=""
for r in ${ROUNDS:-a b}; do
  c t$r ""
  c sw$r "TRTOP_GAPS_SWITCH_S=0.0002"
  c lf$r "TRTOP_GAPS_LAUNCH_FIRST=1"
  c lfsw$r "TRTOP_GAPS_LAUNCH_FIRST=1 TRTOP_GAPS_SWITCH_S=0.0002"
  [[ ${ALL:-1} == 0 ]] || c all$r "TRTOP_GAPS_LAUNCH_FIRST=1 TRTOP_GAPS_SWITCH_S=0.0002 TRTOP_GAPS_PYDLL=1 TRTOP_GAPS_HANDOFF=1"
  c on$r "" --slot-handoff=on
done
SKIP_TESTS=1 BENCH="--concurrency ${CONC:-64} --paired-rounds 0 --floor-seconds 0 --skip-tiny --skip-inprocess --baseline 5341,1.00 $B" \
  bash /root/gpu/run/run.sh > /dev/null
for n in $NAMES; do echo "## $n"; python3 bench/batch_gaps.py /tmp/g-$n; done > "$OUT/gaps.txt" 2>&1
grep -E "^trtop serve|^\| [0-9]+ \| own " "$OUT/bench.txt"
cat "$OUT/gaps.txt"
