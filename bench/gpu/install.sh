#!/usr/bin/env bash
# On the GPU host. `install.sh stage`: copy whatever of .gpu/ this device call carried to /root/gpu (it stays
# there while the machine is warm; the working tree's ignored folders do not). `install.sh`: join the
# onnxruntime-gpu parts, check them, unpack into /tmp/site with the server's wheels (and nvidia-ml-py), the
# tests' wheels into /tmp/tsite (pytest's path only: the benchmark runs with the host's own packages beside
# /tmp/site), perf_analyzer into /tmp/pa. Idempotent.
set -euo pipefail
d=/root/gpu
if [[ ${1:-} == stage ]]; then
  mkdir -p $d
  for x in .gpu/small .gpu/tw .gpu/run .gpu/bin; do [[ -d $x ]] && rm -rf "$d/${x#.gpu/}" && cp -r "$x" "$d/"; done
  for p in .gpu/ortx/p*; do [[ -e $p/part ]] && mkdir -p "$d/ortx/${p##*/}" && cp "$p/part" "$d/ortx/${p##*/}/"; done
  ls -d $d/ortx/p* 2>/dev/null | tr '\n' ' '; echo
  exit 0
fi
[[ -e /tmp/site/onnxruntime/__init__.py ]] && exit 0
cat $(ls $d/ortx/p*/part | sort -V) > /tmp/ort.tar.xz
echo "$(cat $d/tw/ORT_SHA256)  /tmp/ort.tar.xz" | sha256sum -c -
mkdir -p /tmp/site /tmp/tsite /tmp/pa
tar xJf /tmp/ort.tar.xz -C /tmp/site
# nvidia-ml-py too, as in the server's image: bench/serve_gpu.py samples the GPU through it (not nvidia-smi)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  $(ls $d/small/*.whl | grep -v perf_analyzer) $d/tw/nvidia_ml_py-*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/tsite $d/tw/*.whl
(cd /tmp/pa && python3 -m zipfile -e $d/small/perf_analyzer-*.whl . && chmod +x perf_analyzer/bin/perf_analyzer)
PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
