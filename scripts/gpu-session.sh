#!/usr/bin/env bash
# One lent GPU session's measurements, as one prepared script (a GPU session here is 15 minutes,
# its start included, so everything is budgeted to end within about 9.5 minutes):
#   1. `igpt bench train --size m` and `igpt bench sample` on the GPU (issue 14),
#   2. the CPU ladder's M shape pre-trained on the GPU with a larger batch, the fine-tuning rate
#      chosen by `igpt finetune-sweep`, a long fine-tuning with early stopping, and both models
#      evaluated and exported (issue 16: classification at the seed's level).
# Run from the repository root with the GPU machine's python3 (torch, Lightning, scikit-learn):
#   OUT=<folder> bash scripts/gpu-session.sh
# MNIST comes as data/gpu-session.tar.gz (make it here with `make gpu-session-data`). A step that
# fails leaves the others running; what each step printed is in $OUT/log.txt, the run folders
# (without checkpoints) in $OUT/runs.tar.gz and the two exported models in $OUT/models.tar.part-*.
# A dry run on a CPU, to try the script before spending GPU time on it:
#   OUT=/tmp/dry DEVICE=cpu SIZE=xs BENCH_SIZE=xs PRETRAIN_STEPS=20 FINETUNE_STEPS=20 SWEEP_STEPS=10 DEADLINE=60 bash scripts/gpu-session.sh
set -u
OUT=${OUT:?set OUT to the folder the results go to}
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-cpu-m} BENCH_SIZE=${BENCH_SIZE:-m} SWEEP_STEPS=${SWEEP_STEPS:-200}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
STARTED=$SECONDS
exec > >(tee -a "$OUT/log.txt") 2>&1

igpt() { python3 -m igptlib.cli "$@"; }
step() { echo; echo "=== $(date -u +%H:%M:%S) +$((SECONDS - STARTED)) s: $*"; }
left() { echo $(( ${DEADLINE:-560} - (SECONDS - STARTED) )); }  # seconds before the results must be packed

step "the machine"
nvidia-smi -L
python3 -c "import torch, lightning, sklearn; print('torch', torch.__version__, 'lightning', lightning.__version__, 'sklearn', sklearn.__version__)"
tar -xzf data/gpu-session.tar.gz

step "igpt bench train --size $BENCH_SIZE (issue 14)"
timeout 90 python3 -m igptlib.cli bench train --size $BENCH_SIZE --device $DEVICE --steps 5 --warmup 3 --json "$OUT/bench-train-$BENCH_SIZE.json" \
    || echo "(failed or timed out: exit status $?)"
step "igpt bench sample (issue 14)"
timeout 60 python3 -m igptlib.cli bench sample --device $DEVICE --json "$OUT/bench-sample.json" || echo "(failed or timed out: exit status $?)"
step "the step time of the GPU sweep's other sizes, s and l (issue 15: what the 524,000-step sweep would cost)"
for size in s l; do
    timeout 40 python3 -m igptlib.cli bench train --size $size --device $DEVICE --no-reference --steps 3 --warmup 2 \
        --json "$OUT/bench-train-$size.json" || echo "(failed or timed out: exit status $?)"
done
step "one training step of the pre-training below ($SIZE, batch 64), for its step count"
timeout 40 python3 -m igptlib.cli bench train --size $SIZE --batch-size 64 --device $DEVICE --no-reference --steps 3 --warmup 3 \
    --json "$OUT/bench-train-$SIZE-64.json" || echo "(failed or timed out: exit status $?)"
# Steps that fit a time share, from the benchmark's pure step time plus what Lightning and the
# data loader (augmentation in the main process) add per step, guessed at 25 ms.
STEP_S=$(python3 -c "import json; print(json.load(open('$OUT/bench-train-$SIZE-64.json'))['ours (bf16, SDPA)']['seconds_per_step'] + 0.025)" \
         2>/dev/null || echo 0.08)
(cd "$OUT" && tar -cf bench.tar bench-*.json && rm bench-*.json)  # one file back for all of them
fit() { python3 -c "print(max(200, int($1 / $STEP_S) // 100 * 100))"; }
PRETRAIN_STEPS=${PRETRAIN_STEPS:-$(fit 150)}
FINETUNE_STEPS=${FINETUNE_STEPS:-$(fit 100)}
echo "step estimate ${STEP_S} s: pre-training ${PRETRAIN_STEPS} steps, fine-tuning at most ${FINETUNE_STEPS}"

RUN=runs/gpu-$SIZE
step "pre-train the $SIZE shape on $DEVICE: batch 64, ${PRETRAIN_STEPS} steps (issue 16)"
igpt train --size $SIZE --device $DEVICE --run-dir $RUN --steps "$PRETRAIN_STEPS" --budget-minutes 3.2 \
    --set data.batch_size=64 train.val_every=$((PRETRAIN_STEPS / 8)) train.save_every=$((PRETRAIN_STEPS / 4)) \
    "train.checkpoint_steps=[]" train.progress_bar=false

step "choose the fine-tuning rate on the validation split"
igpt finetune-sweep --model $RUN/checkpoints/last.ckpt --lr 3e-4 1e-3 3e-3 --steps $SWEEP_STEPS --runs runs/finetune-sweep \
    --out runs/finetune-sweep-record --budget-minutes 1.6
LR=$(python3 -c "import json; print(json.load(open('runs/finetune-sweep-record/finetune_sweep.json'))['chosen_lr'])" 2>/dev/null || echo 1e-3)
echo "fine-tuning rate: $LR"

step "fine-tune at lr $LR: crops, cosine, at most ${FINETUNE_STEPS} steps, early stopping after 5 validations"
igpt train --model $RUN/checkpoints/last.ckpt --device $DEVICE --lr "$LR" --steps "$FINETUNE_STEPS" --early-stop 5 \
    --budget-minutes 2.0 --set "data.augment=[crop]" optim.schedule=cosine optim.warmup_steps=50 \
    train.val_every=$((FINETUNE_STEPS / 20)) train.save_every=$((FINETUNE_STEPS / 4)) train.progress_bar=false

step "evaluate the fine-tuned model's classification on the test split"
timeout 60 python3 -m igptlib.cli evaluate --model $RUN/finetune/checkpoints/best.ckpt --device $DEVICE --precision bf16 \
    --no-probes --completions 0

step "export both models"
mkdir -p runs/export
igpt export --model $RUN/checkpoints/last.ckpt --out runs/export/mnist-gpu.safetensors
igpt export --model $RUN/finetune/checkpoints/best.ckpt --out runs/export/mnist-gpu-classifier.safetensors
tar -cf - -C runs/export . | split -b 15M - "$OUT/models.tar.part-"

step "evaluate the pre-trained model: likelihood, probes per layer, completions (until $(left) s are spent)"
timeout "$(left)" python3 -m igptlib.cli evaluate --model $RUN/checkpoints/last.ckpt --device $DEVICE --precision bf16 --completions 8

step "pack the run folders, without checkpoints"
tar -czf "$OUT/runs.tar.gz" --exclude='*.ckpt' runs
ls -la "$OUT"
step "done"
