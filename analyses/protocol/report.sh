#!/bin/bash
# After full.sh stopped: K = the first test captions complete for both seeds (in order), then the reports.
cd "$(dirname "$0")/../.."   # the repository root; outputs under out/protocol
A=${ATTNLENS:-attnlens}
PY=${PYTHON:-python}
METHODS="--method none --method syngen --method syngen-entropy --method attend-excite --method divide-bind"
kof() { $PY - "$1" <<'PYEOF'
import sys
from pathlib import Path
from attnlens.testbed.bench import bench_variants, existing_run, heldout_prompts
from attnlens.testbed.protocol import read_calibration
d = Path(sys.argv[1])
variants = bench_variants(["none", "syngen", "syngen-entropy", "attend-excite", "divide-bind"], [], None,
                          read_calibration(d / "calibrate" / "calibration.json"))
k = 0
for p in heldout_prompts(39, split="test", skip=8):
    if all(existing_run(d / "runs-test", v, p, s, steps=50, guidance_scale=7.5)[1] for v in variants for s in (0, 1)):
        k += 1
    else:
        break
print(k)
PYEOF
}
for m in bow shapes; do
  D=out/protocol/$m; M=attnlens-shapes$([ $m = bow ] && echo -bow)
  K=$(kof $D); echo "$m: K = $K"
  $A bench binding --model $M $METHODS --split test --skip-prompts 8 --prompts $K --seeds 0,1 --sweep "" --no-analyse \
     --calibration $D/calibrate/calibration.json --threads 1 --out $D/test --runs $D/runs-test > $D/test.txt 2>&1
  if [ $K -gt 12 ]; then
    $A bench binding --model $M $METHODS --split test --skip-prompts 8 --prompts 12 --seeds 0,1 --sweep "" --no-analyse \
       --calibration $D/calibrate/calibration.json --threads 1 --out $D/test-k12 --runs $D/runs-test > $D/test-k12.txt 2>&1
  fi
  # the ground-truth-box upper bound on the same units (not part of the pinned protocol: an intervention, not a method)
  $A bench binding --model $M --method none --intervene mask-gt --split test --skip-prompts 8 --prompts $K --seeds 0,1 \
     --sweep "" --no-analyse --threads 1 --out $D/test-mask --runs $D/runs-test > $D/test-mask.txt 2>&1 &
done
wait
$PY analyses/09_auc_both_models.py --model attnlens-shapes=out/protocol/shapes \
    --model attnlens-shapes-bow=out/protocol/bow --out out/protocol/auc > out/protocol/auc.log 2>&1
$PY analyses/10_protocol_differences.py --model attnlens-shapes-bow=out/protocol/bow \
    --model attnlens-shapes=out/protocol/shapes --out out/protocol/differences
date -u +"%H:%M:%S report done"
