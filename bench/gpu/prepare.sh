#!/usr/bin/env bash
# Here (no GPU): what a GPU host (the device machine: Python 3.12, CUDA 13, no network) needs to run the
# gpu-marked tests and bench/serve_gpu.py, in .gpu/ (kept out of git), cut to fit the 64 MiB that travel per
# device command. Four device calls then set the host up and run:
#   onnxruntime-gpu (from ../shared/tools/gpu-payload.sh, or GPU_PAYLOAD=path) without libonnxruntime.so and the
#   TensorRT provider (the Python binding loads neither), as one xz tar in parts (FIRST_MB, default 45, then PART_MB, 60);
#   the server's wheels and perf_analyzer (.gpu/small, from gpu-payload.sh); pytest and the tests' wheels (.gpu/tw);
#   the native front-end (.gpu/bin/trtop-http, and one built with the race detector, with the last part);
#   bench/gpu/install.sh and run.sh (.gpu/run).
# Usage: bench/gpu/prepare.sh   (in the repository's root; prints the device calls to make)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
payload=${GPU_PAYLOAD:-$root/../shared/tools/gpu-payload.sh}
first_mb=${FIRST_MB:-45}  # the first call carries the wheels and scripts too
part_mb=${PART_MB:-60}    # the others carry a part and the tree (~3 MB)
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
[[ -d .gpu/small && -e .gpu/ort/part-00 ]] || bash "$payload"
if [[ ! -e .gpu/ortx/SHA256 ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cat .gpu/ort/part-* > "$tmp/ort.whl"
  echo "$(cat .gpu/ort/SHA256)  $tmp/ort.whl" | sha256sum -c --quiet -
  mkdir "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$tmp/ort.whl" .)
  rm -f "$tmp"/x/onnxruntime/capi/libonnxruntime.so.* "$tmp"/x/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
  echo "compressing onnxruntime-gpu (a few minutes) ..."
  (cd "$tmp/x" && tar cf - . | xz -T0 -6 > "$tmp/ort.tar.xz")
  rm -rf .gpu/ortx && mkdir -p .gpu/ortx
  size=$(stat -c %s "$tmp/ort.tar.xz")
  head -c "${first_mb}000000" "$tmp/ort.tar.xz" > "$tmp/part-0"
  tail -c +"$((first_mb * 1000000 + 1))" "$tmp/ort.tar.xz" | split -b "${part_mb}000000" -d -a 1 - "$tmp/rest-"
  for p in "$tmp"/rest-*; do n=${p##*-}; mv "$p" "$tmp/part-$((n + 1))"; done
  for p in "$tmp"/part-*; do n=${p##*-}; mkdir -p ".gpu/ortx/p$n" && mv "$p" ".gpu/ortx/p$n/part"; done
  sha256sum "$tmp/ort.tar.xz" | cut -d' ' -f1 > .gpu/ortx/SHA256
  echo "onnxruntime-gpu: $((size / 1000000)) MB in $(ls -d .gpu/ortx/p* | wc -l) parts"
fi
rm -rf .gpu/tw && mkdir -p .gpu/tw
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/tw pytest pytest-asyncio pytest-timeout httpx nvidia-ml-py
cp .gpu/ortx/SHA256 .gpu/tw/ORT_SHA256
mkdir -p .gpu/bin && (cd native/http && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o ../../.gpu/bin/trtop-http .)
# The same built with Go's race detector (~3 MB compressed; run.sh unpacks it to /root/gpu/race): a configuration
# with PATH=/root/gpu/race:$PATH runs it, and a data race that only many cores make likely is then in its log.
(cd native/http && CGO_ENABLED=1 go build -race -trimpath -ldflags="-s -w" -o ../../.gpu/trtop-http-race .)
xz -T0 -9 -f -c .gpu/trtop-http-race > .gpu/bin/trtop-http-race.xz && rm .gpu/trtop-http-race
rm -rf .gpu/run && mkdir -p .gpu/run && cp bench/gpu/install.sh bench/gpu/run.sh .gpu/run/
parts=($(ls -d .gpu/ortx/p* | sort -V))
echo
echo "Device calls, back to back (a machine stays warm ~30 s between them; 64 MiB travel per call):"
echo "  1. carry [\".gpu/small\", \".gpu/tw\", \".gpu/run\", \"${parts[0]}\"]  command: bash .gpu/run/install.sh stage"
for i in $(seq 1 $((${#parts[@]} - 1))); do
  extra=""; last=""
  if [[ $i == $((${#parts[@]} - 1)) ]]; then extra="\".gpu/bin\", "; last=" && bash /root/gpu/run/run.sh"; fi
  echo "  $((i + 1)). carry [${extra}\"${parts[$i]}\"]  command: bash /root/gpu/run/install.sh stage$last"
done
echo "The last call installs, runs the gpu tests and bench/serve_gpu.py (BENCH=\"flags\" before it to choose); results in \$OUT."
