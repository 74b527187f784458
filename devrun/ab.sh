#!/usr/bin/env bash
# A/B on the H200: old binary vs new (--after-select 0/1).
set -u
mkdir -p /tmp/gpu && tar -xJf .devpkg/gpu.tar.xz -C /tmp/gpu
P=/tmp/gpu/pkg
export LD_LIBRARY_PATH=$P/bundle:/usr/local/cuda/lib64
NEW=$P/bin/attention_bench OLD=devrun/attention_bench_old
$P/bin/gpu_tests --gtest_filter='*Decode*:*PageSelect*' 2>&1 | tail -5
SP="--op decode --seq 131072 --streaming-kv-heads 4 --sink 128 --local 4096 --budget 4096 --select gpu --iters 200"
pick() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(' '.join(f'{k}={d[k]}' for k in sys.argv[1:] if k in d))" "$@"; }
for round in 1 2; do
  for B in 1 16; do for N in 1 8; do
    echo "== sparse B=$B N=$N round $round"
    echo -n "old:     "; $OLD $SP --batch $B --graph-calls $N | pick median_ms select_median_ms select_decode_median_ms
    echo -n "new a=0: "; $NEW $SP --batch $B --graph-calls $N --after-select 0 | pick median_ms select_median_ms select_decode_median_ms
    echo -n "new a=1: "; $NEW $SP --batch $B --graph-calls $N --after-select 1 | pick median_ms select_median_ms select_decode_median_ms
  done; done
done
for round in 1 2; do
  for cfg in "--batch 16 --seq 131072" "--batch 16 --seq 8192" "--batch 1 --seq 8192" "--batch 1 --seq 131072"; do
    for N in 1 8; do
      echo "== dense $cfg N=$N round $round"
      echo -n "old: "; $OLD --op decode $cfg --graph-calls $N --iters 100 | pick median_ms tbps
      echo -n "new: "; $NEW --op decode $cfg --graph-calls $N --iters 100 | pick median_ms tbps
    done
  done
done
