#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU:
#   bash docs/gpu_check.sh [output folder]
# 1. fast (CUDA graphs) against eager: the same training run both ways, with and without
#    channels_last, evaluated at the end; loss trajectories and metrics compared;
# 2. gancli bench: DCGAN 64x64 RGB (widths 64, z 100) at batch 64 and 1024, and the classic model at
#    batch 64 with and without its R1 penalty, each as baseline / eager / fast in fp32 and bf16;
#    eager and fast again with channels_last;
# 3. one process under torchrun (NCCL, DistributedDataParallel), the same run as 1, compared with eager;
# 4. the timing instrumentation's cost: fast bf16 DCGAN-64 at batch 64 with and without its timers;
# 5. torch.compile at batch 64;
# 6. the modern recipes under capture: the classic model's R1 double backward, and R3GAN's
#    objective (R1 + R2) with G_ema's update and DiffAugment inside the graphs, each trained
#    fast against eager and compared; bench rows for the recipe presets (DCGAN 64x64 RGB, bf16,
#    batch 64), and the pytest cases marked gpu (tests/test_gpu.py);
# 7. the architectures: a class-conditional ResNet (conditional batch norm, projection D) trained
#    fast against eager on the digits, and bench rows for model=resnet at 32x32 RGB (batch 64 and
#    256), experiment=r3gan at 32x32 and the residual family at 64x64, bf16;
# 8. the batch-1024 and batch-64 targets: where DCGAN-64's bf16 step spends its time
#    (docs/profile_step.py: operators and CUDA kernels, a trace), and torch.compile of G and D
#    captured inside the step's CUDA graphs, against the plain graphs;
# 9. schedules inside the graphs: experiment=r3gan (lr, beta2, R1/R2 gamma and G_ema's half-life
#    ramping, read from device tensors; foreach Adam for the tensor beta2), with real images
#    mirrored at random (data.xflip) before the graphs' static batch, trained fast against
#    eager, and a time budget (train.minutes) timed by host clock on an asynchronous device;
# 10. streaming (data.on_device=false: a background reader, pinned buffers, copies ahead) under
#    CUDA graphs against the data kept on the GPU: the same run, and DCGAN-64's img/s both ways;
# 11. StyleGAN2 under CUDA graphs (its regularisers, style mixing, w_avg and noise captured) against
#    eager, and its bench rows at 32x32 and 64x64.
# Each check runs under its own time limit and the script goes on past a failed one, so one
# broken piece still leaves the others' figures; the last lines list what failed.
# One call must fit a device session of 10 minutes with its machine start, so the checks come
# in parts, each of about 8 minutes of time limits at most (far less in practice): PART=1 (the
# speed targets: bench_dcgan64 and section 8), PART=2 (the R1 double backward under capture
# against eager, and bench rows for the recipe presets, the ResNet at 32x32 and the residual
# family at 64x64), PART=4 (sections 9 and 10 and the pytest cases marked gpu: the loaded checkpoint and
# the schedules inside captured graphs among them, StyleGAN2's graphs against eager too), PART=5
# (section 11, StyleGAN2), PART=3 (everything else); without PART every check runs.
# Where hydra is missing (see shared/wheels-gpu), put its wheels in .whl/ beside this checkout first
# (a gancli wheel there too, from `pip wheel --no-deps -w .whl .`, saves building it on the machine).
# QUICK=1 shrinks every run to a few steps, to try the script on a CPU; ONLY="name name ..." runs
# just the checks named (the names are the first argument of each `check` below).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra" 2>/dev/null; then
  if ls .whl/gancli-*.whl >/dev/null 2>&1; then src=(); else src=(.); fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl "${src[@]}" || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null || true
} | tee "$out/machine.txt"

quick=()
sizes=64,1024
steps=400
if [ "${QUICK:-0}" = 1 ]; then quick=(bench.warmup=1 bench.steps=1 bench.repeats=1 device=cpu); sizes=8,16; steps=20; fi
failed=()
# which part (see the top) a check belongs to
part_of() {
  case $1 in
    bench_dcgan64|bench_dcgan64_compile_graphs|profile_dcgan64_1024|profile_dcgan64_64) echo 1 ;;
    *_r1|r1_graphs_vs_eager|bench_wgan_gp|bench_rpgan|bench_ema_diffaug|bench_resnet32|bench_residual64) echo 2 ;;
    *_sched|sched_graphs_vs_eager|train_fast_minutes|pytest_gpu|*_stream|stream_vs_resident) echo 4 ;;
    *_sg2|*_sg2_*|sg2_graphs_vs_eager) echo 5 ;;
    *) echo 3 ;;
  esac
}
# check NAME SECONDS COMMAND...: run it under a time limit, its output also in $out/NAME.txt
check() {
  local name=$1 seconds=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  if [ -n "${PART:-}" ] && [ -z "${ONLY:-}" ] && [ "$(part_of "$name")" != "$PART" ]; then return; fi
  echo "+ $*" | tee -a "$out/commands.txt"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$seconds" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "= $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/commands.txt"
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

# 1. graphs against eager: the same run, 400 steps of DCGAN on the digits, bf16
plain=(experiment=none)  # the plain groups (the non-saturating DCGAN), as these checks were first run
common=(data=digits precision=bf16 train.steps=$steps train.log_every=10 train.sample_every=$steps train.ckpt_every=0
        eval.every=$steps seed=1)
check train_eager 120 gancli train "${common[@]}" "${plain[@]}" accel=eager hydra.run.dir="$out/eager" "${quick[@]:3}"
check train_fast 90 gancli train "${common[@]}" "${plain[@]}" accel=fast hydra.run.dir="$out/fast" "${quick[@]:3}"
check graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager" "$out/fast"
check train_fast_nhwc 90 gancli train "${common[@]}" "${plain[@]}" accel=fast accel.channels_last=true hydra.run.dir="$out/fast_nhwc" \
  "${quick[@]:3}"
check nhwc_vs_eager 30 python3 docs/compare_runs.py "$out/eager" "$out/fast_nhwc"

# 2. the benchmarks
check bench_dcgan64 120 gancli bench "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 \
  train.batch_size=$sizes precision=fp32,bf16 accel=baseline,eager,fast hydra.run.dir="$out/bench_dcgan64" "${quick[@]}"
# the classic model's step as published (loss.r1_gamma=0), and with the R1 penalty it trains with by default
check bench_classic 60 gancli bench "${plain[@]}" model=classic loss.r1_gamma=0 data=fake data.n=8192 train.batch_size=64 precision=fp32,bf16 \
  accel=baseline,eager,fast hydra.run.dir="$out/bench_classic" "${quick[@]}"
check bench_classic_r1 60 gancli bench "${plain[@]}" model=classic data=fake data.n=8192 train.batch_size=64 precision=fp32,bf16 \
  accel=baseline,eager,fast hydra.run.dir="$out/bench_classic_r1" "${quick[@]}"
check bench_dcgan64_nhwc 120 gancli bench "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 \
  train.batch_size=$sizes precision=fp32,bf16 accel=eager,fast accel.channels_last=true \
  hydra.run.dir="$out/bench_dcgan64_nhwc" "${quick[@]}"
check bench_classic_nhwc 60 gancli bench "${plain[@]}" model=classic loss.r1_gamma=0 data=fake data.n=8192 train.batch_size=64 precision=fp32,bf16 \
  accel=eager,fast accel.channels_last=true hydra.run.dir="$out/bench_classic_nhwc" "${quick[@]}"

# 3. data parallel over one process: NCCL and DDP on the fast path (graphs stay off under DDP);
#    --no-python runs the installed gancli, not the source folder that `-m` would find first
check torchrun_1proc 90 python3 -m torch.distributed.run --standalone --nproc-per-node=1 --no-python \
  gancli train "${common[@]}" "${plain[@]}" accel=fast hydra.run.dir="$out/ddp1" "${quick[@]:3}"
check ddp1_vs_eager 30 python3 docs/compare_runs.py "$out/eager" "$out/ddp1"

# 4. instrumentation overhead, where a step is shortest and so the share largest
overhead=(--rounds 5)
if [ "${QUICK:-0}" = 1 ]; then overhead=(--rounds 1 --steps 2 device=cpu); fi
check overhead 90 python3 docs/overhead.py "${plain[@]}" model=dcgan data.image_size=64 data.channels=3 data.n=8192 \
  train.batch_size=64 precision=bf16 accel=fast "${overhead[@]}"

# 5. torch.compile on the modules
check bench_compile 120 gancli bench "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 \
  train.batch_size=64 precision=bf16 accel=eager accel.compile=default hydra.run.dir="$out/bench_compile" "${quick[@]}"

# 6. the recipes under capture (fast) against eager, then their bench rows
r1=("${plain[@]}" model=classic data=digits precision=bf16 train.steps=$steps train.log_every=10 train.sample_every=$steps
    train.ckpt_every=0 eval.every=$steps seed=1)
check train_eager_r1 60 gancli train "${r1[@]}" accel=eager hydra.run.dir="$out/eager_r1" "${quick[@]:3}"
check train_fast_r1 60 gancli train "${r1[@]}" accel=fast hydra.run.dir="$out/fast_r1" "${quick[@]:3}"
check r1_graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager_r1" "$out/fast_r1"
recipe=("${common[@]}" experiment=rpgan ema.half_life_kimg=2 augment=diffaug)
check train_eager_recipe 120 gancli train "${recipe[@]}" accel=eager hydra.run.dir="$out/eager_recipe" "${quick[@]:3}"
check train_fast_recipe 90 gancli train "${recipe[@]}" accel=fast hydra.run.dir="$out/fast_recipe" "${quick[@]:3}"
check recipe_graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager_recipe" "$out/fast_recipe"
dcgan64=(model=dcgan data=fake data.image_size=64 data.channels=3 data.n=8192 train.batch_size=64 precision=bf16
         accel=eager,fast)
if [ "${QUICK:-0}" = 1 ]; then dcgan64+=(model.g_width=8 model.d_width=8); fi
check bench_wgan_gp 60 gancli bench "${dcgan64[@]}" experiment=wgan_gp hydra.run.dir="$out/bench_wgan_gp" "${quick[@]}"
check bench_hinge_sn 60 gancli bench "${dcgan64[@]}" experiment=hinge_sn hydra.run.dir="$out/bench_hinge_sn" "${quick[@]}"
check bench_rpgan 60 gancli bench "${dcgan64[@]}" experiment=rpgan hydra.run.dir="$out/bench_rpgan" "${quick[@]}"
check bench_ema_diffaug 60 gancli bench "${dcgan64[@]}" "${plain[@]}" ema.half_life_kimg=10 augment=diffaug \
  hydra.run.dir="$out/bench_ema_diffaug" "${quick[@]}"
# 7. the architectures
narrow=()
if [ "${QUICK:-0}" = 1 ]; then narrow=(model.g_width=8 model.d_width=8); fi
cond=("${common[@]}" "${plain[@]}" model=resnet model.conditional=true "${narrow[@]}")
check train_eager_cond 150 gancli train "${cond[@]}" accel=eager hydra.run.dir="$out/eager_cond" "${quick[@]:3}"
check train_fast_cond 120 gancli train "${cond[@]}" accel=fast hydra.run.dir="$out/fast_cond" "${quick[@]:3}"
check cond_graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager_cond" "$out/fast_cond"
rgb32=(data=fake data.image_size=32 data.channels=3 data.n=8192 precision=bf16 accel=eager,fast)
resnet_sizes=64,256
if [ "${QUICK:-0}" = 1 ]; then resnet_sizes=8,16; fi
check bench_resnet32 90 gancli bench "${rgb32[@]}" "${plain[@]}" train.batch_size=$resnet_sizes model=resnet "${narrow[@]}" \
  hydra.run.dir="$out/bench_resnet32" "${quick[@]}"
if [ "${QUICK:-0}" = 1 ]; then narrow=(model.width=4 model.width_max=8 model.group_size=4); fi
check bench_r3gan32 90 gancli bench "${rgb32[@]}" train.batch_size=64 experiment=r3gan "${narrow[@]}" hydra.run.dir="$out/bench_r3gan32" \
  "${quick[@]}"
check bench_residual64 60 gancli bench "${plain[@]}" data=fake data.image_size=64 data.channels=3 data.n=8192 train.batch_size=64 \
  precision=bf16 accel=eager,fast model=residual "${narrow[@]}" hydra.run.dir="$out/bench_residual64" "${quick[@]}"

# 8. the speed targets: where the bf16 step of DCGAN-64 spends its time, at batch 1024 and 64, and
#    torch.compile's kernels captured inside the step's graphs
profile=(--steps 20)
big=1024 small=64
if [ "${QUICK:-0}" = 1 ]; then profile=(--steps 2 --warmup 1 device=cpu); big=16 small=8; fi
check profile_dcgan64_1024 90 python3 docs/profile_step.py "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 \
  data.n=8192 train.batch_size=$big precision=bf16 accel=fast --out "$out/profile_dcgan64_1024" "${profile[@]}"
check profile_dcgan64_64 60 python3 docs/profile_step.py "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 \
  data.n=8192 train.batch_size=$small precision=bf16 accel=fast --out "$out/profile_dcgan64_64" "${profile[@]}"
check bench_dcgan64_compile_graphs 200 gancli bench "${plain[@]}" model=dcgan data=fake data.image_size=64 data.channels=3 \
  data.n=8192 train.batch_size=$sizes precision=bf16 accel=fast accel.compile=default \
  hydra.run.dir="$out/bench_dcgan64_compile_graphs" "${quick[@]}"
# 9. schedules (and xflip) under capture against eager, and a time budget
sched=("${common[@]}" experiment=r3gan data.xflip=true)
if [ "${QUICK:-0}" = 1 ]; then sched+=(model.width=4 model.width_max=8 model.group_size=4); fi
check train_eager_sched 120 gancli train "${sched[@]}" accel=eager hydra.run.dir="$out/eager_sched" "${quick[@]:3}"
check train_fast_sched 90 gancli train "${sched[@]}" accel=fast hydra.run.dir="$out/fast_sched" "${quick[@]:3}"
check sched_graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager_sched" "$out/fast_sched"
minutes=0.5
if [ "${QUICK:-0}" = 1 ]; then minutes=0.05; fi
check train_fast_minutes 90 gancli train data=digits precision=bf16 accel=fast train.minutes=$minutes train.log_every=50 \
  train.sample_every=0 train.ckpt_every=0 schedule.lr_g.shape=cosine schedule.lr_g.end=0 hydra.run.dir="$out/fast_minutes" \
  "${quick[@]:3}"

# 10. streaming: batches gathered by the background reader into pinned buffers and copied ahead
#     without blocking (data.on_device=false) against the data kept on the GPU, under CUDA graphs:
#     the same run both ways, then DCGAN-64's img/s both ways at batch 64 and 1024 (summary.json)
for where in true false; do
  check "train_ondevice_${where}_stream" 90 gancli train "${common[@]}" "${plain[@]}" accel=fast data.on_device=$where \
    hydra.run.dir="$out/fast_ondevice_$where" "${quick[@]:3}"
done
check stream_vs_resident 30 python3 docs/compare_runs.py "$out/fast_ondevice_true" "$out/fast_ondevice_false"
for batch in ${sizes//,/ }; do
  for where in true false; do
    check "img_s_${where}_${batch}_stream" 90 gancli train "${plain[@]}" model=dcgan data=fake data.image_size=64 \
      data.channels=3 data.n=16384 train.batch_size=$batch train.steps=$steps train.log_every=50 train.sample_every=0 \
      train.ckpt_every=0 precision=bf16 accel=fast data.on_device=$where hydra.run.dir="$out/img_s_${where}_$batch" \
      "${quick[@]:3}"
  done
done

# 11. StyleGAN2: lazy R1 and path length (two D and two G graphs), style mixing, w_avg's update and the
#     noise inputs inside the graphs, trained fast against eager on the digits; bench rows at 32x32
#     and 64x64 RGB, batch 64, bf16, eager and fast (the families' img/s beside bench_resnet32 and
#     bench_residual64)
sg2=("${common[@]}" experiment=stylegan2 model.width=32 model.width_max=256 train.batch_size=32)
sg2_bench=(experiment=stylegan2 model.width_max=256 data=fake data.channels=3 data.n=8192 train.batch_size=64 \
  precision=bf16 accel=eager,fast)
if [ "${QUICK:-0}" = 1 ]; then sg2+=(model.width=4 model.width_max=8 model.z_dim=16 model.w_dim=16); \
  sg2_bench+=(model.width=4 model.width_max=8 model.z_dim=16 model.w_dim=16); fi
check train_eager_sg2 150 gancli train "${sg2[@]}" accel=eager hydra.run.dir="$out/eager_sg2" "${quick[@]:3}"
check train_fast_sg2 120 gancli train "${sg2[@]}" accel=fast hydra.run.dir="$out/fast_sg2" "${quick[@]:3}"
check sg2_graphs_vs_eager 30 python3 docs/compare_runs.py "$out/eager_sg2" "$out/fast_sg2"
check bench_sg2_32 90 gancli bench "${sg2_bench[@]}" data.image_size=32 hydra.run.dir="$out/bench_sg2_32" "${quick[@]}"
check bench_sg2_64 90 gancli bench "${sg2_bench[@]}" data.image_size=64 hydra.run.dir="$out/bench_sg2_64" "${quick[@]}"

if [ "${QUICK:-0}" != 1 ]; then  # without CUDA they skip
  check pytest_gpu 180 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
fi

echo "== failed: ${failed[*]:-none}" | tee -a "$out/commands.txt"
[ ${#failed[@]} = 0 ]
