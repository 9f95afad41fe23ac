#!/usr/bin/env bash
# The script that produced the H200 results (GPU suite, GPU tests, induction heads at 256 and the
# 4M-token ablation), as it ran on a device machine (one H200, JAX with CUDA preinstalled, no network): run from the repository root with the missing wheels in
# .whl/ (grain, tensorboardX, ml-collections, array-record, portpicker, importlib_resources).
# Every stage has its own wall-clock limit, so one failure or overrun costs only its stage; each
# stage's log and outputs land in $OUT/w and come back as one tarball.
set -u
OUT=${OUT:-/tmp/device_out}
W=$OUT/w
mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
T0=$SECONDS

stage() {  # stage NAME LIMIT_S COMMAND...: run under a limit, keep the log, print its tail
  local name=$1 lim=$2 t=$SECONDS rc
  shift 2
  echo "### $name (limit ${lim} s, at $((SECONDS - T0)) s)"
  timeout -k 5 "$lim" "$@" > "$W/$name.log" 2>&1
  rc=$?
  echo "### $name rc=$rc in $((SECONDS - t)) s"
  grep -v "^\s*$" "$W/$name.log" | grep -v "Warning\|warn(" | tail -n "${TAILN:-14}"
}

# 0. what is there, and GPU correctness: the implementations that only run on a GPU (cuDNN
#    attention, the associative scans) against their float64 numpy references.
stage env 30 python3 -c "
import jax, jaxlib, flax, optax, orbax.checkpoint as ocp, grain, numpy
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax',
      optax.__version__, 'orbax', ocp.__version__, 'numpy', numpy.__version__)
print(jax.devices(), jax.devices()[0].device_kind)
import bk_jax.ops.scan as s; print('prefers_parallel', s.prefers_parallel())"
TAILN=6 stage gpu_tests 60 python3 -m pytest -q -rs -p no:cacheprovider \
  tests/test_models_attention.py tests/test_ops_linear_scan.py

# 1-3. three jobs side by side on the one GPU (tiny models use a sliver of it; their
#    figures are losses and accuracies, and the step times they print are labelled as shared):
#    (1) equal tokens (4M) on Tiny Shakespeare, one seed: the keyed Green mixer, Green+conv+gate,
#    the default block, Mamba and the Transformer at matched parameters; (2, 3) induction heads
#    trained at 256 (Mamba's paper model: 2 layers, d_model 64, no weight decay), accuracy
#    streamed at 2^6 ... 2^16: Mamba (the harness check) and the keyed BK variant.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
IND="--no_match --train_len 256 --batch 32 --lr 3e-3 --weight_decay 0 --steps 3000 \
  --min_log2 6 --max_log2 16 --samples 16 --token_budget 1048576 --budget_s 120"
BK_IND="${BK_INDUCTION:-model.bk_mixer=green,model.bk_key_dim=8,model.bk_conv=True,model.bk_gate=True,model.selective_shift=True,model.selective_coupling=True,model.eta_min=0.001}"
TAILN=16 stage quality_4m 200 python3 scripts/ablations.py --d_model 64 --n_layers 2 \
  --n_heads 16 --heads 16 --only green_keyed,green_conv_gate,base --baselines mamba,transformer \
  --quality_tokens 4000000 --n 2048 --out "$W/quality_4m" &
TAILN=8 stage induction_mamba 200 python3 scripts/induction_anchor.py --kinds mamba $IND \
  --out "$W/induction_mamba" &
TAILN=8 stage induction_bk 200 python3 scripts/induction_anchor.py --kinds resnet_bk $IND \
  --bk_overrides "$BK_IND" --out "$W/induction_bk" &
wait
unset XLA_PYTHON_CLIENT_PREALLOCATE

# 4. the GPU suite (ops grid, every kind at d_model 512 up to 131k tokens, seq32k vs
#    the chunked default in one stage, 1M-token streaming), its stage budgets scaled to the time
#    this call has left (the suite's full budgets sum to 280 s).
LEFT=$(( ${CALL_S:-570} - (SECONDS - T0) ))
SCALE=$(python3 -c "print(round(max(0.2, min(1.0, ($LEFT - 75) / 280)), 2))")
TAILN=40 stage gpu_suite $((LEFT - 5)) python3 scripts/benchmark.py --suite gpu \
  --budget-scale "$SCALE" --out "$W/gpu_suite"

echo "### total $((SECONDS - T0)) s"
find "$W" -name runs -prune -o -name cache -prune -o -type f -print \
  | tar czf "$OUT/results.tgz" -T - 2>/dev/null
ls -la "$OUT"
