#!/usr/bin/env bash
# One prepared GPU session: environment check, CUDA smoke runs of the CLI, then the benchmarks.
# Run from the repo root on the GPU machine with .whl (pydantic, lightly wheels), .data
# (cifar10.tar.gz) and, for the studio part, .qt carried. Results land in $OUT (or bench/results).
#   bash bench/device.sh PART [PART ...]      parts run in the order given, under one deadline:
#     simclr    CLI smoke on CUDA (SMOKE=0: none) + SimCLR bench, eager, lightly in the same run (issue 2 pt 12), ~2 min
#     compiled  the same SimCLR bench with torch.compile (ours and the bare model), ~3 min
#     methods   per-method benches vs lightly (issues 4 pt 7, 5 pt 8), ~5 min
#     vit-compiled  DINO, MAE, SimMIM benches with torch.compile (default mode, then reduce-overhead:
#               CUDA graphs) against eager lightly (issues 4 pt 7, 5 pt 8: eager ours was 1.0x / 0.9x), ~6 min
#     vit-nchw  DINO, MAE, SimMIM eager with ours in NCHW (no channels_last), lightly in the same run, ~4 min
#     profile   where a DINO / MAE / SimMIM step's time goes (kernels per step, GPU busy vs wall, top ops by
#               phase: augmentation, forward, optimiser, after-step), eager then compiled, ~3 min
#     studio    MIM CUDA smoke, then throughput with the studio attached vs headless (issue 3 pt 10), ~3 min;
#               needs .qt (bash bench/qt_bundle.sh builds it)
#     accuracy  CIFAR-10 kNN, $EPOCHS (20) epochs each, SimCLR / MoCo v2 / BYOL / DINO (issue 4 pt 8), ~8 min
#     accuracy-recipes  the same for EPOCHS (10) with each preset's recipe and with lightly's benchmark
#               recipe (SGD, no warm-up: tells a short-run recipe effect from a method problem), ~7 min
# DEADLINE (seconds from the start, default 580) caps every step's timeout so the call ends inside
# the device tool's 600 s; a step that would get under 30 s is skipped and says so. With
# PACK=1 every result file is packed into $OUT/results.tgz (a device call returns 8 files at most).
set -uo pipefail
PARTS=("${@:-simclr}")
OUT=${OUT:-bench/results}
FINAL_OUT=$OUT
[ "${PACK:-0}" = 1 ] && OUT=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-580}
EPOCHS=${EPOCHS:-}  # empty: each accuracy part its own default
# cap NATURAL: prints the timeout for a step (its natural length, or what is left), 0 if too little is left
cap() { local left=$((DEADLINE - SECONDS - 5)); [ "$left" -lt 30 ] && { echo 0; return; }; [ "$1" -lt "$left" ] && echo "$1" || echo "$left"; }
step() { local t; t=$(cap "$1"); shift
  if [ "$t" = 0 ]; then echo "SKIPPED (deadline): $*"; return; fi
  echo "== [$SECONDS s] timeout $t: $*"; timeout "$t" "$@"; echo "== [$SECONDS s] exit $?"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, timm, pydantic, lightly; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'lightly', lightly.__version__)"
[ -f .data/cifar10.tar.gz ] && mkdir -p /tmp/data && tar -xzf .data/cifar10.tar.gz -C /tmp/data
for PART in "${PARTS[@]}"; do
case $PART in
simclr)
  # CUDA smoke: the CLI end to end on the GPU (bf16, channels_last, fused optimiser), export, eval
  # (SMOKE=0 skips it: about 110 s of a 15-minute device budget)
  if [ "${SMOKE:-1}" = 1 ]; then
  step 70 python3 -m engine.cli.train --method simclr --data shapes --steps 60 --batch-size 256 --device cuda \
    --out /tmp/smoke --overwrite --quiet --set train.log_every=20 2>&1 | tail -4
  step 40 python3 -m engine.cli.evaluate knn --run /tmp/smoke --device cuda
  cp /tmp/smoke/metrics.jsonl "$OUT/smoke-metrics.jsonl" 2>/dev/null
  fi
  # SimCLR on CIFAR-10, eager, lightly 1.6.0 (CPU transforms, 16 workers) in the same run
  step 190 python3 bench/run.py --out "$OUT" --data /tmp/data/cifar10 --cache-dir /tmp/cache --steps 150 --warmup 30 ;;
compiled)
  step 210 python3 bench/run.py --out "$OUT" --data /tmp/data/cifar10 --cache-dir /tmp/cache --steps 150 --warmup 40 \
    --compile --only ours model_only ;;
methods)
  # DINO, MAE, SimMIM, 7 ResNet methods against lightly 1.6.0; its own budget skips what does not fit
  T=$(cap 420); [ "$T" != 0 ] && step "$T" python3 bench/methods.py --out "$OUT" --budget-s $((T - 10)) ;;
vit-compiled)
  # compiling a ViT-B takes about a minute: long warm-ups, long per-bench timeouts; lightly stays eager
  for MODE in default reduce-overhead; do
    T=$(cap 330); [ "$T" != 0 ] && step "$T" python3 bench/methods.py --out "$OUT" --compile --compile-mode $MODE \
      --only mae_vitb16 simmim_vitb16 dino_vits16 --warmup 25 --steps 40 --bench-timeout 150 --budget-s $((T - 10))
  done ;;
vit-nchw)
  # the ViT benches eager with ours in NCHW (as lightly's ViT examples), lightly in the same run:
  # does channels_last cost the ViTs (SimMIM 0.91x, MAE 1.01x with it)? ~4 min
  T=$(cap 300); [ "$T" != 0 ] && step "$T" python3 bench/methods.py --out "$OUT" --no-channels-last \
    --only simmim_vitb16 mae_vitb16 dino_vits16 --bench-timeout 120 --budget-s $((T - 10)) ;;
profile)
  step 150 python3 bench/profile_step.py --out "$OUT"
  step 300 python3 bench/profile_step.py --compile --out "$OUT/compiled" ;;
studio)
  # The device image has no Qt: .qt holds a trimmed PySide6 + pyqtgraph and Debian 12 .debs of the
  # system libraries Qt loads; only libraries the machine lacks are linked in.
  if ! python3 -c "import PySide6.QtWidgets" 2>/dev/null && [ -f .qt/qt.tar.xz ]; then
    mkdir -p /tmp/qt /tmp/qtsys /tmp/qtlibs && tar -xJf .qt/qt.tar.xz -C /tmp/qt
    for d in .qt/*.deb; do dpkg -x "$d" /tmp/qtsys; done
    for f in /tmp/qtsys/usr/lib/x86_64-linux-gnu/*.so.* /tmp/qtsys/lib/x86_64-linux-gnu/*.so.*; do  # Debian 12 keeps some in /lib
      ldconfig -p | grep -q "/$(basename "$f")\$" || ln -sf "$f" /tmp/qtlibs/
    done
    export PYTHONPATH=/tmp/qt/site:$PYTHONPATH LD_LIBRARY_PATH=/tmp/qtlibs:${LD_LIBRARY_PATH:-}
    export FONTCONFIG_PATH=/tmp/qtsys/etc/fonts
  fi
  QT_QPA_PLATFORM=offscreen python3 -c "from PySide6.QtWidgets import QApplication; import pyqtgraph; QApplication([]); print('Qt ok')" \
    || echo "Qt does not load here: the studio run below will fail (the headless runs are still written)"
  # CUDA smoke of the masked-image methods (host-made masks reach the GPU without a sync)
  for P in $([ "${STUDIO_SMOKE:-1}" = 1 ] && echo mae_small multimae_small beit_small); do
    step 45 python3 -m engine.cli.train --preset $P --data shapes --steps 20 --batch-size 64 --device cuda \
      --out /tmp/smoke_$P --overwrite --quiet --set train.log_every=10 --set data.shapes_size=32 \
      $([ $P = beit_small ] && echo --set params.tokenizer_steps=10) 2>&1 | tail -2
  done
  # SimCLR B 512 on 32 px shapes: headless, in the real main window (offscreen), headless again
  step 300 env QT_QPA_PLATFORM=offscreen python3 bench/studio_throughput.py --steps 400 --warmup 80 --out "$OUT" ;;
accuracy)
  step 540 python3 bench/cifar_accuracy.py --data /tmp/data/cifar10 --cache-dir /tmp/cache --epochs "${EPOCHS:-20}" \
    --time-limit 120 --out "$OUT" ;;
accuracy-recipes)
  for R in preset lightly; do
    step 300 python3 bench/cifar_accuracy.py --data /tmp/data/cifar10 --cache-dir /tmp/cache --epochs "${EPOCHS:-10}" \
      --recipe $R $([ $R = lightly ] && echo --no-baseline) --time-limit 60 --out "$OUT"
  done ;;
*) echo "unknown part: $PART (simclr, compiled, methods, vit-compiled, vit-nchw, profile, studio, accuracy, accuracy-recipes)"; exit 2 ;;
esac
done
if [ "${PACK:-0}" = 1 ]; then mkdir -p "$FINAL_OUT" && tar -czf "$FINAL_OUT/results.tgz" -C "$OUT" . && ls -la "$OUT"; fi
echo "device.sh done at $SECONDS s"
