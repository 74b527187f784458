#!/usr/bin/env bash
# On the GPU machine: Nsight Compute on one attention_bench kernel launch per case (after
# scripts/device/pack.sh here). Prints warp stall reasons (per issued instruction), scheduler, memory
# and occupancy lines; with SOURCE=1 also writes the per-instruction (SASS) counters of each case to
# $OUT/ncu-source-N.csv, which scripts/device/ncu_top_stalls.py ranks here; with SOURCE=2 the counters
# per CUDA source line too ($OUT/ncu-lines-N.csv, for scripts/device/ncu_lines.py), which needs a
# build with line info: cmake -B build-lineinfo ... -DSPARSESERVE_CUDA=ON -DCMAKE_CUDA_FLAGS=-lineinfo.
# Usage: KERNEL=decode_attention bash scripts/device/ncu-attention.sh "--op decode --seq 8192 --batch 1" ...
set -u
mkdir -p /tmp/gpu && tar -xJf .devpkg/gpu.tar.xz -C /tmp/gpu
P=/tmp/gpu/pkg
NCU=/usr/local/cuda/bin/ncu
export LD_LIBRARY_PATH=$P/bundle:/usr/local/cuda/lib64
stalls=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard barrier \
  short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle not_selected selected no_instruction \
  dispatch_stall sleeping membar branch_resolving drain imc_miss tex_throttle misc)
stalls=${stalls%,}
common="--q-heads 32 --kv-heads 8 --dim 128 --page 64"
n=0
for a in "$@"; do
  n=$((n + 1))
  echo "== $a"
  # shellcheck disable=SC2086
  $NCU --clock-control none -k "regex:${KERNEL:-attention}" --launch-skip 1 --launch-count 1 --import-source yes \
    --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section Occupancy \
    --section SpeedOfLight --section SourceCounters --metrics "$stalls" -o "/tmp/ncu-$n" -f \
    $P/bin/attention_bench $a $common --iters 2 --warmup 1 --graph 0 > /dev/null 2>&1
  $NCU -i "/tmp/ncu-$n.ncu-rep" 2>&1 |
    grep -E "stalled|Warp Cycles|Issued Warp|Eligible|Active Warps|Duration|Throughput|Hit Rate|Achieved Occ|Theoretical Occ" |
    head -"${LINES_PER_CASE:-40}"
  if [[ ${SOURCE:-0} -ge 1 ]]; then
    $NCU -i "/tmp/ncu-$n.ncu-rep" --page source --csv --print-source sass > "${OUT:-/tmp}/ncu-source-$n.csv" 2>&1
  fi
  if [[ ${SOURCE:-0} == 2 ]]; then
    $NCU -i "/tmp/ncu-$n.ncu-rep" --page source --csv --print-source cuda,sass > "${OUT:-/tmp}/ncu-lines-$n.csv" 2>&1
  fi
done
