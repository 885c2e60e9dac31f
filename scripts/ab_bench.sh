#!/usr/bin/env bash
# A/B (/C...) of source trees on one GPU lease: builds each in place (no pip install, so none
# shadows another), then runs the same benchmark for each in rotating rounds, so that all see
# the same machine and the same clock drift. Ratios to PyTorch's backends come from each run;
# the summary averages rocm/cudnn per grid point and tree, and divides each tree's by A's.
#
#   scripts/ab_bench.sh TREE_A TREE_B [TREE_C ...] [bench_attention.py arguments, from the first --option]
#
# e.g. on the device, with the other trees exported into the carried scratch/ folder first
# (git archive fwd-early-k | tar -x -C scratch/early):
#   scripts/ab_bench.sh . scratch/early scratch/wide --only grid --mode fwd --headdims 128
# Every tree runs tree A's benchmarks/bench_attention.py against its own package. The summary
# covers the grid's and the blog curve's CSVs (rocm/cudnn per point).
# Environment: ROUNDS (default 2), OUT (default build/ab), MAX_JOBS (default 16), and the
# build filters of setup.py (FLASH_ATTN_ROCM_HEAD_DIMS, ..._DTYPES) to shorten the builds.
set -euo pipefail
trees=()
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do trees+=("$(cd "$1" && pwd)"); shift; done
[ ${#trees[@]} -ge 2 ] || { sed -n 2,14p "$0"; exit 2; }
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--only grid --mode fwdbwd --headdims 128)
OUT=${OUT:-build/ab}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROUNDS=${ROUNDS:-2}
n=${#trees[@]}
# The image's CXX links libstdc++ statically (see gpu_check.sh); build with the system compiler.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
python3 -m pip uninstall -y -q flash-attn-rocm >/dev/null 2>&1 || true

for i in $(seq 0 $((n - 1))); do
  echo "=== build ${trees[$i]}"
  (cd "${trees[$i]}" && MAX_JOBS=${MAX_JOBS:-16} python3 setup.py -q build_ext --inplace) > "$OUT/build_$i.log" 2>&1 ||
    { tail -30 "$OUT/build_$i.log"; exit 1; }
done

for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    i=$(((k + round - 1) % n))  # each round starts one tree later
    echo "=== round $round, tree $i (${trees[$i]})"
    # Every tree runs the first tree's benchmark script (older trees may lack its options),
    # importing its own flash_attn_rocm.
    (cd "${trees[$i]}" && PYTHONPATH="${trees[$i]}" python3 "${trees[0]}/benchmarks/bench_attention.py" "${bench_args[@]}" \
      --out-dir "$OUT/tree${i}_round${round}") > "$OUT/bench_${i}_${round}.log" 2>&1 ||
      { tail -30 "$OUT/bench_${i}_${round}.log"; exit 1; }
  done
done

python3 - "$OUT" "$ROUNDS" "$n" <<'PY'
import csv, sys
from collections import defaultdict
from pathlib import Path

out, rounds, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ratios = defaultdict(list)  # (file, headdim, causal, seqlen, tree) -> [rocm/cudnn, ...]
for tree in range(n):
    for r in range(1, rounds + 1):
        for path in sorted((out / f"tree{tree}_round{r}").glob("grid_*.csv")):
            for row in csv.DictReader(open(path)):
                key = (path.name, row["headdim"], row["causal"], row["seqlen"])
                ratios[key + (tree,)].append(float(row["rocm/cudnn"]))
# The blog curve (b1 h32 d128 causal): rocm/cudnn per length from the ms columns.
for tree in range(n):
    for r in range(1, rounds + 1):
        for path in sorted((out / f"tree{tree}_round{r}").glob("blog_*.csv")):
            ms = {(row["seqlen"], row["backend"]): float(row["ms"]) for row in csv.DictReader(open(path))}
            for (seqlen, backend), t in ms.items():
                if backend == "flash_attn_rocm" and (seqlen, "sdpa_cudnn") in ms:
                    ratios[(path.name, "128", "True", seqlen, tree)].append(ms[(seqlen, "sdpa_cudnn")] / t)
keys = sorted({k[:4] for k in ratios}, key=lambda k: (k[0], int(k[1]), k[2], int(k[3])))
names = [chr(ord("A") + t) for t in range(n)]
print(f"{'file':24s} {'d':>4s} {'causal':>6s} {'seqlen':>6s}  "
      + "  ".join(f"{x} rocm/cudnn" for x in names) + "  " + "  ".join(f"{x}/A" for x in names[1:]))
for k in keys:
    means = [sum(v) / len(v) if (v := ratios.get(k + (t,), [])) else float("nan") for t in range(n)]
    print(f"{k[0]:24s} {k[1]:>4s} {k[2]:>6s} {k[3]:>6s}  " + "  ".join(f"{m:12.3f}" for m in means)
          + "  " + "  ".join(f"{m / means[0]:5.3f}" for m in means[1:]))
for name in sorted({k[0] for k in keys}):
    for t in range(n):
        means = {k[3]: sum(v) / len(v) for k in keys if k[0] == name and (v := ratios.get(k + (t,)))}
        if means:
            worst = min(means, key=means.get)
            print(f"{name}: tree {names[t]}: {sum(x < 1.0 for x in means.values())} of {len(means)} points below "
                  f"1.0x cudnn, lowest {means[worst]:.3f} at seqlen {worst}")
PY
