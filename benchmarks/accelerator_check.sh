#!/usr/bin/env bash
# The accelerator check in one prepared run: environment, the GPU benchmark rows (CIFAR
# training first: the targets are there), then the smoke test of every CIFAR config.
#
#   OUT=/tmp/gpu bash benchmarks/accelerator_check.sh            # from the repository root
#   BENCH_ONLY='sampler/*,asym/*' SMOKE=0 bash benchmarks/accelerator_check.sh   # the rest
#
# Each stage has its own time limit (BENCH_S, SMOKE_S seconds) and writes its JSON after
# every row/config, so a stage cut short keeps what it finished. A local `.whl/` folder of
# wheels (e.g. ml_collections, for a machine that lacks it) is installed to /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/accelerator_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L 2>/dev/null
python3 -c "import jax, flax, optax, orbax.checkpoint as o, diffrax, ml_collections
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'orbax', o.__version__ if hasattr(o, '__version__') else '?', jax.devices())" \
  2>&1 | tee "$OUT/env.txt" || exit 1
timeout "${BENCH_S:-300}" python3 -m benchmarks.run --suite=gpu \
  --only="${BENCH_ONLY:-train/cifar/*}" --repeats "${REPEATS:-5}" --min-time 0.3 \
  --out="$OUT/bench_gpu.json" 2>&1 | grep -v "^WARNING: All log\|^I[0-9]\{4\} " | tee "$OUT/bench_gpu.log"
if [ "${SMOKE:-1}" = 1 ]; then
  # One config per process (each loaded as main loads it); the records collect in one JSON.
  SMOKE_CONFIGS=${SMOKE_CONFIGS:-configs/cifar_score.py,configs/cifar_energy.py,configs/cifar_resnet_energy.py,configs/cifar_qc.py,configs/cifar_drl.py}
  rm -f "$OUT/smoke_gpu.json"
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout "${SMOKE_S:-240}" bash -c 'for c in ${1//,/ }; do
      python3 scripts/accelerator_smoke.py --config="$c" --out="$2"; done' _ \
    "$SMOKE_CONFIGS" "$OUT/smoke_gpu.json" \
    2>&1 | grep -v "^WARNING: All log\|^I[0-9]\{4\} " | tee "$OUT/smoke_gpu.log"
fi
