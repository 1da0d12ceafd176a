#!/usr/bin/env bash
# The README's GPU figures (Speed → On a GPU), one command on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu.sh [OUT_DIR]          # about 5 minutes; logs in OUT_DIR
#
# Fashion-MNIST must be where `fit` finds it (see the README). Each part runs under its own time
# limit (LIMIT seconds, default 150) and a failing part does not stop the others. PYTHON picks
# the interpreter (default python3), DEVICE the device (default cuda; cpu to try the script).
set -u
out=${1:-benchmarks/results/gpu}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
limit=${LIMIT:-150}
epochs=${EPOCHS:-10}
mkdir -p "$out"
run() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
}
cli=("$py" -c "import sys; sys.argv[0] = 'pyro-vae'; from pyro_vae.cli import main; main()")

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$py" -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__)"

# Training step against the plain PyTorch loop (batch 128 and 512) and whole epochs at 128.
run train "$py" benchmarks/bench_train.py --device "$device" --batch-sizes 128 512 \
    --images 25600 --rounds 7 --epochs 3
# The README's main command on the GPU: data resident there; train_seconds per epoch.
rm -rf /tmp/pyro-vae-gpu-run
run fit "${cli[@]}" fit --dataset fashion-mnist --epochs "$epochs" --device "$device" --quiet \
    --out /tmp/pyro-vae-gpu-run
cp /tmp/pyro-vae-gpu-run/metrics.csv "$out/metrics.csv" 2>/dev/null
run evaluate "${cli[@]}" evaluate /tmp/pyro-vae-gpu-run --device "$device"
# Importance-sampled evaluation against the plain estimator; allocator peak at K = 1000, 5000.
run iwae "$py" benchmarks/bench_evaluate.py --device "$device" --images 2000 --k 1000
# --precision bf16: speed and nats, and the main command with it.
run amp "$py" benchmarks/bench_amp.py --device "$device"
rm -rf /tmp/pyro-vae-gpu-bf16
run fit_bf16 "${cli[@]}" fit --dataset fashion-mnist --epochs "$epochs" --device "$device" \
    --precision bf16 --quiet --out /tmp/pyro-vae-gpu-bf16
# torchrun: the NCCL backend on CUDA (gloo on the CPU), one process per GPU.
rm -rf /tmp/pyro-vae-gpu-ddp
gpus=$("$py" -c "import torch; print(max(1, torch.cuda.device_count()))")
run ddp "$py" -m torch.distributed.run --standalone --nproc-per-node "$gpus" --no-python "${cli[@]}" fit \
    --dataset fashion-mnist --epochs 2 --device "$device" --quiet --out /tmp/pyro-vae-gpu-ddp
