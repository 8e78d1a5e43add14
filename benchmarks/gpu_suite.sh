#!/usr/bin/env bash
# The GPU benchmarks of issues 8 and 9 as one script, for a short lease on a lent GPU (the `device` tool).
#
# The lent machine receives only the repository, so what the benchmarks read comes in a git-ignored folder
# ($ASSETS, default .gpu/): tokenizer/ (a BERT tokenizer: all-MiniLM-L6-v2's files), data/stsb/stsb-en-train.csv
# and data/trecqa/train.csv (copies of ../shared/data's, never committed), COMMIT (the commit measured); and
# wheels of what the machine lacks ($WHEELS, default .whl/: datasets, dill, multiprocess, sentence-transformers
# 6.2.0), installed into /tmp/site. Weights are random (benchmarks/random_checkpoint.py): speed does not depend
# on their values. Every stage runs under its own time limit, so one failure leaves the others' figures; logs
# and JSON go to $OUT (or ./gpu_out).
#
# Prepare here:  mkdir -p .gpu/tokenizer .gpu/data/stsb .gpu/data/trecqa && cp <MiniLM dir>/{tokenizer*,vocab.txt,
#                special_tokens_map.json,config.json} .gpu/tokenizer/ && cp ../shared/data/stsb/stsb-en-train.csv
#                .gpu/data/stsb/ && cp ../shared/data/trecqa/train.csv .gpu/data/trecqa/ && git rev-parse --short
#                HEAD > .gpu/COMMIT
# Run there:     bash benchmarks/gpu_suite.sh            (device tool: carry [".gpu", ".whl"])
#                STAGES="attention synthetic profile throughput compile" bash benchmarks/gpu_suite.sh   (a second call)
# On an H200 (session 6) crossjax's first GPU compiles took 10-40 s a shape (cause not measured), so the
# stages do not fit one 10-minute call: the default runs the two that issues 8 and 9 name, the rest by STAGES.
set -u
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-.gpu}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl >>"$OUT/setup.log" 2>&1 || echo "wheel install failed: see setup.log"
  export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "commit $(cat "$ASSETS/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tail -n +1
"$PY" - <<'PY' 2>&1 | tee -a "$OUT/setup.log"
from importlib.metadata import version
names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "torch", "sentence-transformers",
         "datasets", "tokenizers", "pyarrow")
print(", ".join(f"{n} {version(n)}" for n in names))
import jax
print("jax devices:", jax.devices())
PY
TOK="$ASSETS/tokenizer"
DATA="$ASSETS/data"
STAGES=${STAGES:-"packed reranker"}

stage() {  # stage NAME SECONDS COMMAND...: run under a limit, log to $OUT/NAME.log, report the exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep -E '^\||^  crossjax packed|^#|crossjax / ST|pairs scored|^ +(crossjax|sentence-transformers) |Error|error:' \
    "$OUT/$name.log" | grep -v -E 'Warning|warn' | tail -40
  echo "=== $name: rc $rc, $((SECONDS - start)) s"
}

for s in $STAGES; do
  case $s in
    packed)  # issue 8: real STS-B pairs, crossjax packed vs PyTorch padded per batch, real-token MFU
      stage packed 280 "$PY" benchmarks/train_step.py --pairs stsb --models bert-base,minilm \
        --dtypes bfloat16,float32 --batch-sizes 128 --steps 30 --seq-len 128 --tokenizer "$TOK" \
        --data-dir "$DATA" ;;
    reranker)  # issue 9: LambdaLoss and MNRL, crossjax's trainer vs sentence-transformers' on CUDA
      [ -d /tmp/ckpt-minilm ] || "$PY" benchmarks/random_checkpoint.py /tmp/ckpt-minilm --model minilm \
        --tokenizer "$TOK" >>"$OUT/setup.log" 2>&1
      stage reranker 280 "$PY" benchmarks/reranker_training.py --model /tmp/ckpt-minilm --data-dir "$DATA" \
        --steps 40 --queries 16 --docs 8 ;;
    attention)  # packed rows' block-diagonal mask: crossjax's XLA attention vs jax.nn's xla and cudnn paths
      stage attention 40 "$PY" benchmarks/attention_paths.py ;;
    synthetic)  # full-length random pairs (no padding anywhere): the MFU ceiling of each library's step
      stage synthetic 150 "$PY" benchmarks/train_step.py --models bert-base --dtypes bfloat16,float32 \
        --batch-sizes 128 --steps 20 --seq-len 128 ;;
    profile)  # where the bf16 BERT-base step's time goes, by kernel (the embedding gradients' scatter, ...)
      stage profile 90 "$PY" benchmarks/step_profile.py --model bert-base --rows 128 --tokens 128 --dtype bfloat16 \
        --top 25 ;;
    throughput)  # a user's view: fit + predict, compiles included, vs sentence-transformers' old_fit
      [ -d /tmp/ckpt-minilm ] || "$PY" benchmarks/random_checkpoint.py /tmp/ckpt-minilm --model minilm \
        --tokenizer "$TOK" >>"$OUT/setup.log" 2>&1
      stage throughput 150 "$PY" benchmarks/train_throughput.py --model /tmp/ckpt-minilm --data-dir "$DATA" \
        --trials 1 --repeats 2 ;;
    compile)  # issue 8: compile seconds of the BERT-base train step, scanned vs unrolled layers (3x asked)
      stage compile 200 "$PY" benchmarks/compile_time.py --models bert-base --dtypes bfloat16 --steps 2 ;;
    *) echo "unknown stage $s" ;;
  esac
done
