#!/usr/bin/env bash
# The README's GPU figures (Speed → On a GPU), one command on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu.sh [OUT_DIR]          # about 4 minutes; logs in OUT_DIR
#
# Fashion-MNIST must be where `fit` finds it (see the README). Each part runs under its own time
# limit and writes OUT_DIR/PART.log, ending with its exit status and seconds (124: the limit
# stopped it); a failing part does not stop the others, and the script exits 1 if any failed.
# Environment: PYTHON (the interpreter, default python3), DEVICE (default cuda; cpu to try the
# script), LIMIT (seconds per part, default 150), EPOCHS (of the main command, default 10).
set -u
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-benchmarks/results/gpu}" && cd "${1:-benchmarks/results/gpu}" && pwd)
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
limit=${LIMIT:-150}
epochs=${EPOCHS:-10}
work=$(mktemp -d)
failed=0
run() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== exit $rc after $((SECONDS - start)) s" >>"$out/$name.log"
    tail -n 25 "$out/$name.log"
    [ "$rc" = 0 ] || failed=1
}
cli=("$py" -c "import sys; sys.argv[0] = 'pyro-vae'; from pyro_vae.cli import main; main()")

{
    if [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    "$py" -c "import sys, torch, pyro; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'pyro', pyro.__version__)"
} 2>&1 | tee "$out/env.log"

# Training step against the plain PyTorch loop (batch 128 and 512) and whole epochs at 128.
run train "$py" benchmarks/bench_train.py --device "$device" --batch-sizes 128 512 \
    --images 25600 --rounds 7 --epochs 3
# The README's main command on the GPU: data resident there; train_seconds per epoch.
run fit "${cli[@]}" fit --dataset fashion-mnist --epochs "$epochs" --device "$device" --quiet \
    --out "$work/run"
cp "$work/run/metrics.csv" "$out/metrics.csv" 2>/dev/null
run evaluate "${cli[@]}" evaluate "$work/run" --device "$device"
# Importance-sampled evaluation against the plain estimator; allocator peak at K = 1000, 5000.
run iwae "$py" benchmarks/bench_evaluate.py --device "$device" --images 2000 --k 1000
# --precision bf16: speed and nats, and the main command with it.
run amp "$py" benchmarks/bench_amp.py --device "$device" --batch-sizes 128 512 4096
run fit_bf16 "${cli[@]}" fit --dataset fashion-mnist --epochs "$epochs" --device "$device" \
    --precision bf16 --quiet --out "$work/bf16"
cp "$work/bf16/metrics.csv" "$out/metrics_bf16.csv" 2>/dev/null
# torchrun: the NCCL backend on CUDA (gloo on the CPU), one process per GPU.
gpus=1
if [ "$device" = cuda ]; then
    gpus=$("$py" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
run ddp "$py" -m torch.distributed.run --standalone --nproc-per-node "$gpus" --no-python \
    "${cli[@]}" fit --dataset fashion-mnist --epochs 2 --device "$device" --quiet \
    --out "$work/ddp"
rm -rf "$work"
exit "$failed"
