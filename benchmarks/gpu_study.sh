#!/usr/bin/env bash
# The CIFAR study on PreAct-ResNet-18 (eps 8/255: ATL, FGSM-PGI with and without EMA, N-FGSM, FGSM-RS), for a lent GPU
# machine, in one call (ATL's default averages its weights, so FGSM-PGI + EMA is the like-for-like row beside it).
#
# That machine has torch but neither this package nor pyautoattack, no internet and not ../shared. Prepare here, in
# the repository root (.gpu/ is git-ignored through .git/info/exclude and travels with `carry`):
#
#   mkdir -p .gpu/site && .venv/bin/pip wheel -q --no-deps --no-build-isolation -w /tmp/w . \
#     && unzip -qo /tmp/w/adv_transport-*.whl -d .gpu/site                 # the library (pure Python)
#   cp -r .venv/lib/python3.*/site-packages/pyautoattack .gpu/site/ && rm -rf .gpu/site/pyautoattack/examples
#   cp ../shared/data/cifar10_jpeg_lossy.tar.xz ../shared/tools/cifar10_lossy_from_jpegs.py .gpu/
#
# then, on the device:  ADV_TRANSPORT_COMMIT=<short hash> bash benchmarks/gpu_study.sh   (writes under $OUT)
# and here: python benchmarks/cifar_study.py report --model preact-resnet18 --out <the returned study folder>.
# Settings: EPOCHS (10), EPS_RAMP (3), SEEDS (0,1,2: seed by seed, each seed's METHODS in the order given, as many
# as fit), LIMIT (560 s from the start: the study is stopped then and its finished runs packed, inside a 10-minute
# call; no run starts in the last RUN_S = 170 s of it), METHODS, MODEL (preact-resnet18), DEVICE (cuda), EXTRA (more
# options of the main study; a dry run here: DEVICE=cpu MODEL=small-cnn EPOCHS=1 EXTRA="--train-n 500 --aa-n 20").
# The JPEG-lossy copy is for relative comparisons only.
set -u
OUT=${OUT:-/tmp/gpu_study_out}
EPOCHS=${EPOCHS:-10}
EPS_RAMP=${EPS_RAMP:-3}
SEEDS=${SEEDS:-0,1,2}
LIMIT=${LIMIT:-560}
RUN_S=${RUN_S:-170}
METHODS=${METHODS:-ATL;FGSM-PGI + EMA;FGSM-PGI;N-FGSM;FGSM-RS}
MODEL=${MODEL:-preact-resnet18}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
STUDY=/tmp/gpu_study
mkdir -p "$OUT" "$STUDY" /tmp/gpu_data
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  (cd /tmp && python3 -c "import torch, adv_transport, pyautoattack; print('torch', torch.__version__, 'cuda', torch.version.cuda)")
  python3 .gpu/cifar10_lossy_from_jpegs.py .gpu/cifar10_jpeg_lossy.tar.xz /tmp/gpu_data
  # a smoke run of the GPU path on a tiny slice; if mixed precision fails there, the study runs in float32
  AMP=bf16
  python3 benchmarks/cifar_study.py study --quick --device "$DEVICE" --amp $AMP --channels-last --model "$MODEL" \
    --data-dir /tmp/gpu_data --out /tmp/gpu_smoke --benchmarks-md /tmp/gpu_smoke.md --methods "ATL;FGSM-PGI" \
    --no-progress >/tmp/gpu_smoke.log 2>&1 || { AMP=off; tail -30 /tmp/gpu_smoke.log; echo "smoke run failed: amp off"; }
  echo "smoke done, amp $AMP"; date -u
  # shellcheck disable=SC2086 - EXTRA is a list of options
  left=$((LIMIT - SECONDS))
  timeout "$left" python3 benchmarks/cifar_study.py study --device "$DEVICE" --amp $AMP --channels-last \
    --model "$MODEL" --eps 8 --seeds "$SEEDS" $EXTRA --methods "$METHODS" --epochs "$EPOCHS" --eps-ramp "$EPS_RAMP" \
    --stop-after $((left - RUN_S)) --keep-going --no-checkpoints --data-dir /tmp/gpu_data --out "$STUDY" \
    --benchmarks-md /tmp/gpu_bench.md --no-progress
  echo "study exit status $?"; date -u
  # one archive: the machine returns at most 8 files (never a run's checkpoints: nothing resumes on a fresh machine)
  tar czf "$OUT/study.tgz" --exclude=./partial -C "$STUDY" . && ls "$STUDY/runs"
} 2>&1 | grep --line-buffered -v -E "UserWarning|load_dataset\(" | tee "$OUT/log.txt"
