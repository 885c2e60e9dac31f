#!/usr/bin/env bash
# A/B of two source trees on one GPU lease: builds each in place (no pip install, so neither
# shadows the other), then runs the same benchmark for each in alternating rounds, so that both
# see the same machine and the same clock drift. Ratios to PyTorch's backends come from each
# run; the summary averages rocm/cudnn per grid point and tree.
#
#   scripts/ab_bench.sh TREE_A TREE_B [bench_attention.py arguments]
#
# e.g. on the device, with the other tree exported into the carried scratch/ folder first
# (git archive hopper-bwd-next | tar -x -C scratch/next):
#   scripts/ab_bench.sh . scratch/next --only grid --mode fwdbwd --headdims 128
# Environment: ROUNDS (default 2), OUT (default build/ab), MAX_JOBS (default 16), and the
# build filters of setup.py (FLASH_ATTN_ROCM_HEAD_DIMS, ..._DTYPES) to shorten the builds.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
trees=("$(cd "$1" && pwd)" "$(cd "$2" && pwd)")
shift 2
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--only grid --mode fwdbwd --headdims 128)
OUT=${OUT:-build/ab}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROUNDS=${ROUNDS:-2}
# The image's CXX links libstdc++ statically (see gpu_check.sh); build with the system compiler.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
python3 -m pip uninstall -y -q flash-attn-rocm >/dev/null 2>&1 || true

for i in 0 1; do
  echo "=== build ${trees[$i]}"
  (cd "${trees[$i]}" && MAX_JOBS=${MAX_JOBS:-16} python3 setup.py -q build_ext --inplace) > "$OUT/build_$i.log" 2>&1 ||
    { tail -30 "$OUT/build_$i.log"; exit 1; }
done

for round in $(seq 1 "$ROUNDS"); do
  order=(0 1)
  [ $((round % 2)) -eq 0 ] && order=(1 0)
  for i in "${order[@]}"; do
    echo "=== round $round, tree $i (${trees[$i]})"
    (cd "${trees[$i]}" && PYTHONPATH="${trees[$i]}" python3 benchmarks/bench_attention.py "${bench_args[@]}" \
      --out-dir "$OUT/tree${i}_round${round}") > "$OUT/bench_${i}_${round}.log" 2>&1 ||
      { tail -30 "$OUT/bench_${i}_${round}.log"; exit 1; }
  done
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import csv, sys
from collections import defaultdict
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
ratios = defaultdict(list)  # (file, headdim, causal, seqlen, tree) -> [rocm/cudnn, ...]
for tree in (0, 1):
    for r in range(1, rounds + 1):
        for path in sorted((out / f"tree{tree}_round{r}").glob("grid_*.csv")):
            for row in csv.DictReader(open(path)):
                key = (path.name, row["headdim"], row["causal"], row["seqlen"])
                ratios[key + (tree,)].append(float(row["rocm/cudnn"]))
keys = sorted({k[:4] for k in ratios}, key=lambda k: (k[0], int(k[1]), k[2], int(k[3])))
print(f"{'file':24s} {'d':>4s} {'causal':>6s} {'seqlen':>6s}  A rocm/cudnn  B rocm/cudnn  B/A")
for k in keys:
    a, b = ratios.get(k + (0,), []), ratios.get(k + (1,), [])
    if not a or not b:
        continue
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    print(f"{k[0]:24s} {k[1]:>4s} {k[2]:>6s} {k[3]:>6s}  {ma:11.3f}  {mb:11.3f}  {mb / ma:5.3f}")
EOF
