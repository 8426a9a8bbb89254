#!/bin/bash
# Stage 4 (docs/testbed.md): the attnlens-shapes test captions from where stage 2 stopped (12), to 39 (78 units),
# so that both models have the size the power calculation asks for; resumable.
cd "$(dirname "$0")/../.."   # the repository root; outputs under out/protocol
A=${ATTNLENS:-attnlens}
METHODS="--method none --method syngen --method syngen-entropy --method attend-excite --method divide-bind"
D=out/protocol/shapes
export OMP_NUM_THREADS=1
for s in 0 1; do
  $A bench binding --model attnlens-shapes $METHODS --split test --skip-prompts 8 --prompts 39 --seeds $s --sweep "" \
     --no-analyse --calibration $D/calibrate/calibration.json --threads 1 --out $D/test4-seed$s --runs $D/runs-test \
     > $D/test4-seed$s.txt 2>&1 &
done
wait
date -u +"%H:%M:%S stage 4 done"
