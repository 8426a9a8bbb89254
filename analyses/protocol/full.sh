#!/bin/bash
# Protocol stage 2 (docs/testbed.md, "Protocol, stage 2"): finish validation (4 captions x 2 seeds), calibrate,
# then test captions 9.. in order: attnlens-shapes-bow up to 39 captions (78 units), attnlens-shapes up to 12.
# Stopping rule: every recording process is stopped at STOP (UTC, HH:MM; stage 2 used 17:55), whatever has or has
# not finished. Run from anywhere: `STOP=17:55 bash analyses/protocol/full.sh`; ATTNLENS / PYTHON name the executables
# (default: attnlens and python on PATH, e.g. with the project's .venv activated).
cd "$(dirname "$0")/../.."   # the repository root; outputs under out/protocol
A=${ATTNLENS:-attnlens}
METHODS="--method none --method syngen --method syngen-entropy --method attend-excite --method divide-bind"
STOP=${STOP:-17:55}
export OMP_NUM_THREADS=1
val() { $A bench binding --model $1 $METHODS --split val --prompts 4 --seeds $3 --sweep 8,64 --no-analyse --threads 1 \
          --out $2/val-seed$3 --runs $2/runs-val > $2/val-seed$3.txt 2>&1; }
cal() { $A bench calibrate --model $1 --method syngen --method syngen-entropy --method attend-excite \
          --method divide-bind --factors 1,8,64 --prompts 4 --seeds 0,1 --threads 1 --out $2/calibrate \
          --runs $2/runs-val > $2/calibrate.txt 2>&1; }
tst() { $A bench binding --model $1 $METHODS --split test --skip-prompts 8 --prompts $4 --seeds $3 --sweep "" --no-analyse \
          --calibration $2/calibrate/calibration.json --threads 1 --out $2/test-seed$3 --runs $2/runs-test \
          > $2/test-seed$3.txt 2>&1; }
model() {  # M D K
  date -u +"%H:%M:%S $1 val"; val $1 $2 0 & val $1 $2 1 & wait
  date -u +"%H:%M:%S $1 calibrate"; cal $1 $2
  date -u +"%H:%M:%S $1 test"; tst $1 $2 0 $3 & tst $1 $2 1 $3 & wait
  date -u +"%H:%M:%S $1 done"
}
model attnlens-shapes-bow out/protocol/bow 39 > out/protocol/bow-stage2.log 2>&1 &
model attnlens-shapes out/protocol/shapes 12 > out/protocol/shapes-stage2.log 2>&1 &
# the stopping rule
until [ "$(date -u +%H:%M)" \> "$STOP" ] || [ "$(date -u +%H:%M)" = "$STOP" ]; do
  sleep 30; jobs -r | grep -q . || break
done
pkill -f "bench binding .*out/protocol"; pkill -f "bench calibrate .*out/protocol"
date -u +"%H:%M:%S stopped"
