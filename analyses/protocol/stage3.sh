#!/bin/bash
# Stage 3 (docs/testbed.md): the bag-of-words test captions from where stage 2 stopped, to 39 (78 units); resumable.
cd "$(dirname "$0")/../.."   # the repository root; outputs under out/protocol
A=${ATTNLENS:-attnlens}
METHODS="--method none --method syngen --method syngen-entropy --method attend-excite --method divide-bind"
D=out/protocol/bow
export OMP_NUM_THREADS=1
for s in 0 1; do
  $A bench binding --model attnlens-shapes-bow $METHODS --split test --skip-prompts 8 --prompts 39 --seeds $s --sweep "" \
     --no-analyse --calibration $D/calibrate/calibration.json --threads 1 --out $D/test3-seed$s --runs $D/runs-test \
     > $D/test3-seed$s.txt 2>&1 &
done
wait
date -u +"%H:%M:%S stage 3 done"
