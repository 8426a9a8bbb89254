#!/bin/bash
# Extend one model's protocol test run to 39 captions (78 units) in the pinned order with its stage-2 calibration;
# resumable (every complete run is reused). Usage: extend.sh bow|shapes TAG  (outputs D/TAG-seedS, D/TAG-seedS.txt).
# Stage 3 is `extend.sh bow test3`, stage 4 `extend.sh shapes test4` (docs/testbed.md).
cd "$(dirname "$0")/../.."   # the repository root; outputs under out/protocol
case "$1" in
  bow) M=attnlens-shapes-bow ;;
  shapes) M=attnlens-shapes ;;
  *) echo "usage: $0 bow|shapes TAG" >&2; exit 2 ;;
esac
[ -n "$2" ] || { echo "usage: $0 bow|shapes TAG" >&2; exit 2; }
A=${ATTNLENS:-attnlens}
METHODS="--method none --method syngen --method syngen-entropy --method attend-excite --method divide-bind"
D=out/protocol/$1
export OMP_NUM_THREADS=1
for s in 0 1; do
  $A bench binding --model $M $METHODS --split test --skip-prompts 8 --prompts 39 --seeds $s --sweep "" \
     --no-analyse --calibration $D/calibrate/calibration.json --threads 1 --out $D/$2-seed$s --runs $D/runs-test \
     > $D/$2-seed$s.txt 2>&1 &
done
wait
date -u +"%H:%M:%S $1 extended to 39 captions"
