"""scripts/device/ncu_lines.py on a small source page in Nsight Compute's CSV layout: per-line and
per-function sums, the kernel named on the line after __launch_bounds__, and the A/B differences."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

HEADER = ["Line No", "Source", "Address", "Source", "Warp Stall Sampling (All Samples)",
          "Warp Stall Sampling (Not-issued Samples)", "Instructions Executed", "stall_long_sb",
          "stall_short_sb", "stall_long_sb (Not Issued)"]

KERNEL = """\
__device__ __forceinline__ int helper(int x) {
  return x + 1;
}

__global__ void __launch_bounds__(128, 1)
    walk_kernel(int* out) {
  out[0] = helper(1);
  out[1] = 2;
}
"""


def write_page(path: Path, source: Path, lines: dict[int, tuple[int, int, int]]) -> None:
    """lines: line number -> (samples, instructions, long_sb samples); a SASS row under each."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["File Path", str(source)])
        w.writerow(["Function Name", "walk_kernel(int*)"])
        w.writerow(HEADER)
        for n, (samples, inst, long_sb) in sorted(lines.items()):
            w.writerow([str(n), "code", "-", "-", str(samples), "0", str(inst), str(long_sb),
                        str(samples - long_sb), "0"])
            w.writerow(["", "", "0x10", "  IADD3 R1, R2, R3", str(samples), "0", str(inst), str(long_sb),
                        str(samples - long_sb), "0"])


def run(repo: Path, *args: str) -> str:
    tool = Path(__file__).resolve().parents[2] / "scripts" / "device" / "ncu_lines.py"
    out = subprocess.run([sys.executable, str(tool), *args, "--repo", str(repo)], capture_output=True,
                         text=True, check=True)
    return out.stdout


def test_sums_lines_and_functions_and_compares(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "kernels").mkdir(parents=True)
    (repo / "kernels" / "walk.cu").write_text(KERNEL)
    # The page names the file by the path it was built from; the tool finds it by its tail.
    source = Path("/elsewhere/checkout/kernels/walk.cu")
    case, base = tmp_path / "case.csv", tmp_path / "base.csv"
    write_page(case, source, {2: (30, 1000, 20), 7: (50, 3000, 50), 8: (5, 500, 0)})
    write_page(base, source, {2: (10, 1000, 0), 7: (50, 2000, 50)})

    out = run(repo, str(case))
    assert "0.0M instructions executed, 85 warp samples" in out
    assert "walk.cu:helper" in out and "walk.cu:walk_kernel" in out
    helper = next(l for l in out.splitlines() if "walk.cu:helper" in l)
    kernel = next(l for l in out.splitlines() if "walk.cu:walk_kernel" in l)
    assert helper.split()[-1] == "30" and kernel.split()[-1] == "55"
    top = next(l for l in out.splitlines() if "walk.cu:7" in l)
    assert "long_sb=50" in top

    out = run(repo, str(case), str(base))
    assert "+0.0M instructions, +25 samples" in out
    diffs = out.split("by line (samples):")[1].splitlines()
    assert any(l.strip().startswith("+20 (10 -> 30)") and "walk.cu:2" in l for l in diffs)
    assert any(l.strip().startswith("+5 (0 -> 5)") and "walk.cu:8" in l for l in diffs)
