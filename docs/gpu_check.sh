#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU:
#   bash docs/gpu_check.sh [output folder]
# 1. gancli bench: DCGAN 64x64 RGB (widths 64, z 100) at batch 64 and 1024, and the seed model at
#    batch 64, each as baseline / eager / fast in fp32 and bf16, plus torch.compile at batch 64;
# 2. fast (CUDA graphs) against eager: the same training run both ways, loss trajectories compared;
# 3. one process under torchrun (NCCL, DistributedDataParallel), the same run, compared with eager;
# 4. the timing instrumentation's cost: fast bf16 DCGAN-64 at batch 64 with and without its timers.
# Where hydra is missing (see shared/wheels-gpu), put its wheels in .whl/ beside this checkout first.
# QUICK=1 shrinks every run to a few steps, to try the script on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl .
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
} | tee "$out/machine.txt"

quick=()
sizes=64,1024
steps=400
if [ "${QUICK:-0}" = 1 ]; then quick=(bench.warmup=1 bench.steps=1 bench.repeats=1 device=cpu); sizes=8,16; steps=20; fi
bench() { echo "+ gancli bench $*" | tee -a "$out/commands.txt"; gancli bench "$@" "${quick[@]}"; }
train() { echo "+ gancli train $*" | tee -a "$out/commands.txt"; gancli train "$@" "${quick[@]:3}"; }

bench model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 \
  train.batch_size=$sizes precision=fp32,bf16 accel=baseline,eager,fast hydra.run.dir="$out/bench_dcgan64"
bench model=seed data=fake data.n=8192 train.batch_size=64 precision=fp32,bf16 accel=baseline,eager,fast \
  hydra.run.dir="$out/bench_seed"
bench model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 train.batch_size=64 precision=bf16 \
  accel=eager accel.compile=default hydra.run.dir="$out/bench_compile" || echo "torch.compile variant failed"

# graphs against eager: the same run, 400 steps of DCGAN on the digits, bf16
common=(data=digits precision=bf16 train.steps=$steps train.log_every=20 train.sample_every=$steps train.ckpt_every=0 seed=1)
train "${common[@]}" accel=eager hydra.run.dir="$out/eager"
train "${common[@]}" accel=fast hydra.run.dir="$out/fast"
python3 docs/compare_runs.py "$out/eager" "$out/fast" | tee "$out/graphs_vs_eager.txt" \
  || echo "fast differs from eager beyond the tolerance"

# data parallel over one process: NCCL and DDP on the fast path (graphs stay off under DDP)
echo "+ torchrun --standalone --nproc-per-node=1 -m gancli train ${common[*]} accel=fast" | tee -a "$out/commands.txt"
python3 -m torch.distributed.run --standalone --nproc-per-node=1 -m gancli train "${common[@]}" accel=fast \
  hydra.run.dir="$out/ddp1" "${quick[@]:3}"
python3 docs/compare_runs.py "$out/eager" "$out/ddp1" | tee "$out/ddp1_vs_eager.txt" \
  || echo "the torchrun run differs from eager beyond the tolerance"

# instrumentation overhead, where a step is shortest and so the share largest
overhead=(--rounds 5)
if [ "${QUICK:-0}" = 1 ]; then overhead=(--rounds 1 --steps 2 device=cpu); fi
echo "+ python3 docs/overhead.py model=dcgan data.image_size=64 data.channels=3 data.n=8192 train.batch_size=64 precision=bf16 accel=fast" | tee -a "$out/commands.txt"
python3 docs/overhead.py model=dcgan data.image_size=64 data.channels=3 data.n=8192 train.batch_size=64 \
  precision=bf16 accel=fast "${overhead[@]}" | tee "$out/overhead.txt"
