#!/usr/bin/env bash
# On the GPU machine (after scripts/device/pack.sh attention_bench here): how well each dense decode
# kernel uses DRAM, by Nsight Compute, for each "BATCH:SEQ" case: our decode and the two paged read
# ceilings (attention_bench --read-ceiling 1, every launch of --warmup 1 --iters 2) on shuffled and on
# in-order pages, then PyTorch SDPA's cuDNN decode on its contiguous cache (one launch after warm-up).
# Each launch is profiled on its own; one line per launch: time, DRAM bytes read, DRAM throughput (%
# of peak over the kernel), L2 read sectors per request, grid, block, dynamic shared memory,
# registers. The same bytes at a lower throughput mean the same data read less efficiently, not more.
# Usage: bash scripts/device/ncu-decode-dram.sh 16:131072 1:131072 ... (> $OUT/ncu-decode-dram.txt)
set -uo pipefail
mkdir -p /tmp/gpu && tar -xJf .devpkg/gpu.tar.xz -C /tmp/gpu
P=/tmp/gpu/pkg
NCU=/usr/local/cuda/bin/ncu
export LD_LIBRARY_PATH=$P/bundle:/usr/local/cuda/lib64
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,launch__grid_size
metrics+=,launch__block_size,launch__shared_mem_per_block_dynamic,launch__registers_per_thread
# ncu --csv --page raw on stdin → one line per kernel launch, prefixed with $1.
parse=$(mktemp --suffix .py)
cat > "$parse" <<'EOF'
import csv, re, sys
rows = list(csv.reader(sys.stdin))
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if head is None:
    sys.exit(f"{sys.argv[1]}: no kernel profiled")
h = {c: i for i, c in enumerate(rows[head])}
for r in rows[head + 2:]:
    num = lambda c: float(r[h[c]].replace(",", ""))
    # "void ns::<unnamed>::name<128, 1>(Params)" → name; a name without arguments stays whole.
    full = r[h["Kernel Name"]]
    m = re.search(r"(\w+)(<[^()]*>)?\(", full)
    name = (m.group(1) if m else full)[:30]
    sect = num("lts__t_sectors_srcunit_tex_op_read.sum") / max(1.0, num("lts__t_requests_srcunit_tex_op_read.sum"))
    print(f"{sys.argv[1]:<26} {name:<30} {num('gpu__time_duration.sum') / 1e3:9.1f} us"
          f" {num('dram__bytes_read.sum') / 1e9:7.3f} GB {num('dram__throughput.avg.pct_of_peak_sustained_elapsed'):6.2f} %"
          f" {sect:4.1f} sect/req  grid {r[h['launch__grid_size']]:>5} x {r[h['launch__block_size']]:>3}"
          f"  smem {num('launch__shared_mem_per_block_dynamic') / 1024:5.1f} KB  regs {r[h['launch__registers_per_thread']]}")
EOF
table() { python3 "$parse" "$1"; }
peer=$(mktemp --suffix .py)
cat > "$peer" <<'EOF'
import sys, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
B, L = int(sys.argv[1]), int(sys.argv[2])
q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16)
def step():
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
for _ in range(3):
    step()
torch.cuda.synchronize()
torch.cuda.nvtx.range_push("peer")
step()
torch.cuda.nvtx.range_pop()
torch.cuda.synchronize()
EOF
printf '%-26s %-30s %12s %10s %8s\n' case kernel time "DRAM read" "DRAM %"
for c in "$@"; do
  B=${c%%:*} L=${c##*:}
  for order in shuffled sequential; do
    $NCU --clock-control none --metrics "$metrics" -k "regex:decode_attention_paged|paged_read_kernel|paged_bulk_read" \
      --launch-count 9 --csv --page raw \
      $P/bin/attention_bench --op decode --seq "$L" --batch "$B" --graph 0 --iters 2 --warmup 1 --read-ceiling 1 \
      --page-order "$order" 2>&1 | table "B=$B L=$L $order"
  done
  $NCU --clock-control none --metrics "$metrics" --nvtx --nvtx-include "peer/" --csv --page raw \
    python3 "$peer" "$B" "$L" 2>&1 | table "B=$B L=$L SDPA cuDNN"
done
rm -f "$peer" "$parse"
