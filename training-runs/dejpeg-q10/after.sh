#!/bin/sh
# dejpeg-q10's ship-rule measurements, in order, once the run has finished (validation only).
#   sh training-runs/dejpeg-q10/after.sh   # candidate exported to runs/dejpeg-q10-export
set -e
RUN=runs/dejpeg-q10
CAND=runs/dejpeg-q10-export
HERE=training-runs/dejpeg-q10
Q8=training-runs/dejpeg-q8
enhancer export --run $RUN --weights final --out $CAND
# the speed first, on an otherwise idle CPU (the rest may share it with other work)
ENHANCER_PRECISION=float32 python $HERE/speed.py weights/dejpeg-q $CAND $HERE/speed.json
enhancer calibrate-steps --model $CAND --data data/photos6
cp $CAND/eval/step_calibration.json $HERE/final_step_calibration.json
python $Q8/soft_validation.py $CAND $HERE/final_soft_validation.json
python training-runs/dejpeg-q7/texture_validation.py $CAND $HERE/final_texture_validation.json
python $HERE/ship_rule.py weights/dejpeg-q/eval/step_calibration.json $CAND/eval/step_calibration.json \
  $Q8/final_soft_validation.json $HERE/final_soft_validation.json \
  $Q8/final_texture_validation.json $HERE/final_texture_validation.json $HERE/speed.json > $HERE/ship_rule.json
cat $HERE/ship_rule.json
