#!/usr/bin/env bash
# One prepared GPU session: environment check, CUDA smoke run of the CLI, then the benchmarks.
# Run from the repo root on the GPU machine with .whl (pydantic, lightly wheels) and .data
# (cifar10.tar.gz) carried. Results land in $OUT (or bench/results).
#   bash bench/device.sh simclr     smoke + SimCLR bench (issue 2 pt 12), about 6 min
#   bash bench/device.sh methods    per-method benches vs lightly (issues 4 pt 7, 5 pt 8), about 7 min
#   bash bench/device.sh studio     MIM CUDA smoke, then throughput with the studio attached vs headless (issue 3 pt 10), about 4 min;
#                                   carry [".whl", ".qt"] (bench/qt_bundle.sh builds .qt)
#   bash bench/device.sh accuracy   CIFAR-10 kNN, 20 epochs each (issue 4 pt 8), about 8 min on an H100
# Each part fits one 10-minute device call; a session's 15 minutes hold about two of them.
PART=${1:-simclr}
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, timm, pydantic, lightly; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'lightly', lightly.__version__)"
[ -f .data/cifar10.tar.gz ] && mkdir -p /tmp/data && tar -xzf .data/cifar10.tar.gz -C /tmp/data
if [ "$PART" = simclr ]; then
# CUDA smoke: the CLI end to end on the GPU (bf16, channels_last, fused optimiser), export, eval
timeout 90 python3 -m engine.cli.train --method simclr --data shapes --steps 60 --batch-size 256 --device cuda \
  --out /tmp/smoke --overwrite --quiet --set train.log_every=20 2>&1 | tail -3
timeout 45 python3 -m engine.cli.evaluate knn --run /tmp/smoke --device cuda
cp /tmp/smoke/metrics.jsonl "$OUT/smoke-metrics.jsonl" 2>/dev/null
# SimCLR benchmark on CIFAR-10 (eager, then compiled), lightly 1.6.0 in the same run
# (timeouts sum to 90 + 45 + 190 + 210 = 535 s of the call's 600, setup included)
timeout 190 python3 bench/run.py --out "$OUT" --data /tmp/data/cifar10 --cache-dir /tmp/cache --steps 150 --warmup 30
timeout 210 python3 bench/run.py --out "$OUT" --data /tmp/data/cifar10 --cache-dir /tmp/cache --steps 150 --warmup 40 --compile --only ours model_only
fi
if [ "$PART" = methods ]; then
# Per-method benchmarks against lightly 1.6.0 (DINO, MAE, SimMIM, 7 ResNet methods), own time budget inside
timeout 420 python3 bench/methods.py --out "$OUT"
fi
if [ "$PART" = studio ]; then
# The device image has no Qt: carry .qt (bash bench/qt_bundle.sh builds it: a trimmed PySide6 +
# pyqtgraph, 23 MB, and Debian 12 .debs of the system libraries Qt loads); only libraries the
# machine lacks are linked in. Carry [".whl", ".qt"] for this part (no .data needed).
if ! python3 -c "import PySide6.QtWidgets" 2>/dev/null && [ -f .qt/qt.tar.xz ]; then
  mkdir -p /tmp/qt /tmp/qtsys /tmp/qtlibs && tar -xJf .qt/qt.tar.xz -C /tmp/qt
  for d in .qt/*.deb; do dpkg -x "$d" /tmp/qtsys; done
  for f in /tmp/qtsys/usr/lib/x86_64-linux-gnu/*.so.*; do
    ldconfig -p | grep -q "/$(basename "$f")\$" || ln -sf "$f" /tmp/qtlibs/
  done
  export PYTHONPATH=/tmp/qt/site:$PYTHONPATH LD_LIBRARY_PATH=/tmp/qtlibs:${LD_LIBRARY_PATH:-}
  export FONTCONFIG_PATH=/tmp/qtsys/etc/fonts
fi
QT_QPA_PLATFORM=offscreen python3 -c "from PySide6.QtWidgets import QApplication; import pyqtgraph; QApplication([]); print('Qt ok')" \
  || echo "Qt does not load here: the studio run below will fail (the headless runs are still written)"
# CUDA smoke of the masked-image methods (host-made masks reach the GPU without a sync), 3 x ~25 s
for P in mae_small multimae_small beit_small; do
  timeout 60 python3 -m engine.cli.train --preset $P --data shapes --steps 20 --batch-size 64 --device cuda \
    --out /tmp/smoke_$P --overwrite --quiet --set train.log_every=10 --set data.shapes_size=32 \
    $([ $P = beit_small ] && echo --set params.tokenizer_steps=10) 2>&1 | tail -1
done
# SimCLR B 512 on 32 px shapes: headless, in the real main window (offscreen), headless again
QT_QPA_PLATFORM=offscreen timeout 420 python3 bench/studio_throughput.py --steps 400 --warmup 80 --out "$OUT"
fi
if [ "$PART" = accuracy ]; then
# CIFAR-10 kNN after 20 epochs for SimCLR, MoCo v2, BYOL, DINO (ResNet-18 CIFAR stem, batch 512)
timeout 540 python3 bench/cifar_accuracy.py --data /tmp/data/cifar10 --cache-dir /tmp/cache --epochs 20 \
  --time-limit 120 --out "$OUT"
fi
