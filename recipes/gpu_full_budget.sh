#!/usr/bin/env bash
# Full-budget training of the SIRST comparisons on one H100/H200 in one command of at most 10 minutes.
#
# Before the device call, here:  python recipes/pack_gpu_data.py recipes/data/sirst.yaml --wheels
#   (carry/data: SIRST as COCO JSON + single-channel PNG, 4.4 MiB; carry/whl: pycocotools for Python 3.12, and
#   carry/weights: MobileNetV2's ImageNet backbone as float16, 4.4 MiB: the GPU image has neither). Device call: command "bash recipes/gpu_full_budget.sh", carry ["carry"], timeout 600.
# On the GPU machine torch and torchvision are preinstalled and there is no package network: the code runs from
# the working tree (PYTHONPATH=.). Each job trains with bf16 autocast, channels-last and 4 loader workers; jobs run
# JOBS_AT_ONCE at a time on the one GPU (small models do not fill an H200 alone), then every best checkpoint is
# validated whole-image and on tiles and stored int8. $OUT gets at most 8 files (the device tool's limit): summary.json (every
# run's metrics and card), throughput.txt (images/s per run and GPU utilisation), log.txt and ckpt_*.tar (the
# runs' best checkpoints, cards and telemetry, and records/RUN.json, each complete run's record for efpn report,
# split in 15 MiB parts). Back here:  cat ckpt_*.tar | tar x -C gpu_out && cp gpu_out/records/*.json docs/claims/run_records/
# && efpn report --out docs/claims  (the seed comparisons read each run's last-epoch card from its record).
#
# DRY_RUN=1 runs the same pipeline on the CPU with two steps per job (the test does, on a tiny masks set).
# Environment: OUT (results), EFPN_DATA (packed data folder, default carry/data), JOBS (comma-separated job
# names, default all), EPOCHS (default 80), SEEDS (default "0 1 2"), JOBS_AT_ONCE (default 6), SGDM_BENCH (default 1:
# after the checkpoints, time a yolov8n_sgdm training step against yolov8n on the GPU, eager and compiled).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_out}
DATA=${EFPN_DATA:-carry/data}
EPOCHS=${EPOCHS:-80}
SEEDS=${SEEDS:-"0 1 2"}
AT_ONCE=${JOBS_AT_ONCE:-6}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/efpn_gpu_runs}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
export PYTHONUNBUFFERED=1
# the GPU image has no weight wheels: the packed float16 backbone-only ImageNet copies (pack_gpu_data.py)
if [ -d carry/weights ]; then export EFPN_PRETRAINED_DIR=${EFPN_PRETRAINED_DIR:-$(pwd)/carry/weights}; fi
if ls carry/whl/*.whl >/dev/null 2>&1 && ! $PY -c "import pycocotools" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site carry/whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

if [ "${DRY_RUN:-0}" = "1" ]; then
  COMMON=(--device cpu --workers 0 --epochs 1 --max-steps 2 --batch-size 2 --val-every 1 --image-size 64)
  AT_ONCE=1
else
  # the last 10 epochs without mosaic, as Ultralytics closes it (every SIRST recipe trains with mosaic)
  COMMON=(--device cuda --amp bf16 --channels-last --workers 4 --epochs "$EPOCHS" --batch-size 16 --val-every 10
          --close-mosaic 10)
fi

# job name -> recipe (the recipe's own settings, then the budget above and the packed data on top)
declare -A RECIPE=(
  [fpn_mv2]=recipes/sirst_fpn_mv2.yaml [efpn_bs_mv2]=recipes/sirst_efpn_bs_mv2.yaml
  [fpn_mv2_cem]=recipes/sirst_fpn_mv2.yaml [fpn_mv2_fbsm]=recipes/sirst_fpn_mv2.yaml
  [fpn_mv2_dcloss]=recipes/sirst_fpn_mv2.yaml
  [yolov8n]=recipes/sirst_yolov8n.yaml [yolov8n_sgdm]=recipes/sirst_yolov8n.yaml
  [yolov8n_rdconv]=recipes/sirst_yolov8n.yaml
  [efpn_mv2]=recipes/sirst_efpn_mv2.yaml
  [fpn_lite0]=recipes/sirst_fpn_mv2.yaml [efpn_bs_lite0]=recipes/sirst_efpn_bs_mv2.yaml
)
# the headline comparisons over every seed; the single-part ablations, plain RDConv and the flagship once. The
# EfficientNet-Lite0 pair runs with JOBS=fpn_lite0,efpn_bs_lite0 when its weights were packed too (--weights
# mobilenet_v2 efficientnet_lite0: 5.6 MiB more than fits beside today's repository)
SEEDED="fpn_mv2 efpn_bs_mv2 yolov8n yolov8n_sgdm"
ONCE="fpn_mv2_cem fpn_mv2_fbsm fpn_mv2_dcloss yolov8n_rdconv efpn_mv2"
WANTED=${JOBS:-"$SEEDED $ONCE"}
WANTED=${WANTED//,/ }

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 > "$WORK/gpu_util.csv" &
  SMI=$!
fi

run_job() {  # name preset seed
  local name=$1 preset=$2 seed=$3
  $PY -m efpn.cli train --config "${RECIPE[$preset]}" --model "$preset" --data "$DATA/sirst.yaml" \
    --seed "$seed" --out "$WORK" --name "$name" --no-progress "${COMMON[@]}" > "$WORK/$name.log" 2>&1
  say "$name: exit $? ($(tail -n 1 "$WORK/$name.log"))"
}

started=$(date +%s)
PIDS=()
running() { local n=0 p; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo "$n"; }
for preset in $WANTED; do
  [ -n "${RECIPE[$preset]:-}" ] || { say "unknown job $preset"; continue; }
  seeds="0"
  case " $SEEDED " in *" $preset "*) seeds=$SEEDS ;; esac
  [ "${DRY_RUN:-0}" = "1" ] && seeds="0"
  for seed in $seeds; do
    while [ "$(running)" -ge "$AT_ONCE" ]; do sleep 2; done
    run_job "sirst_${preset}_s${seed}" "$preset" "$seed" &
    PIDS+=($!)
  done
done
for p in "${PIDS[@]}"; do wait "$p"; done
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null
say "training took $(( $(date +%s) - started )) s"

# validate every best checkpoint, whole image and on 256 px tiles; gather metrics, cards and throughput
$PY - "$WORK" "$OUT" "$DATA" <<'EOF'
import json, sys
from pathlib import Path

import efpn
from efpn.cli.records import read_run, write_record
from efpn.config.data import load_data_config
from efpn.data.splits import load_split
from efpn.evaluation import validate

work, out, data = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
records, names, _ = load_split(load_data_config(data / "sirst.yaml"), "val")
summary, lines = {}, []
for run in sorted(p for p in work.iterdir() if p.is_dir() and not p.name.startswith("_")):
    best = run / "best.safetensors" if (run / "best.safetensors").is_file() else run / "last.safetensors"
    if not best.is_file():
        summary[run.name] = {"error": "no checkpoint"}
        continue
    model = efpn.load_model(str(best), device=device)
    whole = validate(model, records, names, device=device).to_json_dict()
    tiled = validate(model, records, names, device=device, slice_size=256, overlap=0.25).to_json_dict()
    card = json.loads(best.with_suffix(".json").read_text())
    rows = [json.loads(l) for l in (run / "telemetry.jsonl").read_text().splitlines() if l.strip()]
    ips = [r.get("img_per_s") for r in rows if r.get("img_per_s")]
    ship = work / "_ship"
    ship.mkdir(exist_ok=True)
    # int8 weights (per-channel scales) keep 16 runs within what comes back; the metrics here are the fp32 ones
    efpn.save_checkpoint(model, ship / f"{run.name}.safetensors", {**card, "metrics": whole}, storage="int8")
    (ship / f"{run.name}.telemetry.jsonl").write_text((run / "telemetry.jsonl").read_text())
    record = read_run(run)  # None for a run that stopped before its planned epochs
    if record is not None:
        write_record({**record, "note": f"trained by recipes/gpu_full_budget.sh ({device})"}, ship / "records")
    summary[run.name] = {"metrics": whole, "sliced_256": tiled, "preset": card.get("preset"),
                         "epochs": card.get("epochs"), "wall_time_s": card.get("wall_time_s"),
                         "img_per_s": sum(ips) / len(ips) if ips else None}
    lines.append(f"{run.name}: {summary[run.name]['img_per_s'] or 0:.1f} img/s (mean over epochs), "
                 f"AP {whole.get('AP')}, AP50 {whole.get('AP50')}, AP_vt {whole.get('AP_vt')}")
util = work / "gpu_util.csv"
if util.is_file() and util.read_text().strip():
    vals = [float(l.split(",")[0]) for l in util.read_text().splitlines() if l.strip()]
    lines.append(f"GPU utilisation: mean {sum(vals) / len(vals):.0f} %, max {max(vals):.0f} % over {len(vals)} s")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
(out / "throughput.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

# the runs' best checkpoints (int8), cards and telemetry, in parts small enough to come back
(cd "$WORK/_ship" && tar cf - -- *) | split -b 15M -d -a 1 - "$OUT/ckpt_" --additional-suffix=.tar
ls -la "$OUT" | tee -a "$LOG"

# SGDM on the GPU, last (the checkpoints are already in $OUT if time runs out): one training step of
# yolov8n_sgdm against the static yolov8n on the same batches, bf16 + channels-last, eager and torch.compile'd
# (Triton kernels); each ratio line is appended to throughput.txt. SGDM_BENCH=0 skips it.
if [ "${SGDM_BENCH:-1}" = "1" ]; then
  if [ "${DRY_RUN:-0}" = "1" ]; then
    BENCH=(--device cpu --imgsz 64 --batch 2 --steps 1 --warmup 1); MODES="eager"
  else
    BENCH=(--device cuda --amp bf16 --channels-last --imgsz 640 --batch 32 --steps 20 --warmup 3)
    MODES="eager compiled"
  fi
  for mode in $MODES; do
    extra=(); [ "$mode" = compiled ] && extra=(--compile)
    name="_gpu_recipe_sgdm_$mode"
    timeout 240 $PY bench/train_throughput.py --presets yolov8n yolov8n_sgdm yolov8n_sgdm_full --no-peers --no-e2e \
      "${BENCH[@]}" "${extra[@]}" --out "$name" > "$WORK/sgdm_$mode.log" 2>&1
    rc=$?
    missing=0
    for preset in yolov8n_sgdm yolov8n_sgdm_full; do
      row=$(grep -F "| $preset: " "bench/results/$name.md" 2>/dev/null | grep -F '| yolov8n: ' | head -n 1)
      say "$preset train step ($mode, exit $rc): ${row:-no result, see the log below}"
      echo "$preset train step ($mode): ${row:-no result (exit $rc)}" >> "$OUT/throughput.txt"
      [ -n "$row" ] || missing=1
    done
    [ "$missing" = 0 ] || tail -n 5 "$WORK/sgdm_$mode.log" | tee -a "$LOG"
    rm -f "bench/results/$name.md" "bench/results/$name.json"
  done
fi
