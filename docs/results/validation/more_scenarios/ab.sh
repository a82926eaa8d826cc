# The A/B of docs/training.md "More distinct situations", from the repository root, after training both arms'
# weights on the same machine (bf16 where the CPU has it): runs/exp/val96b from val96b.yaml (the 31 train scenarios
# of the validation split, as ../tool_grammar/val96.yaml) and runs/exp/val96m from val96m.yaml (the same plus the 24
# train scenarios 055-078); both 24 SFT updates of 8 sequences:
#   bash docs/results/validation/more_scenarios/ab.sh                 # 24 updates: val96b val96m
#   bash docs/results/validation/more_scenarios/ab.sh "val96b75 val96m75"   # the same configs at 75 updates
# The two arms alternate per user seed, same evaluation config (free decoding, greedy, 8 validation scenarios x 2);
# then benchmarks/sft_fit.py on both (teacher-forced and freely written turns of the 32 held-out demonstrations).
set -e
runs=${1:-val96b val96m}
d=docs/results/validation/more_scenarios
for s in 0 1; do for run in $runs; do
  echo "== $run seed $s $(date +%T)"
  .venv/bin/python benchmarks/eval_run.py docs/results/validation/tool_grammar/gfalse_s$s.yaml runs/exp/$run 0 \
    "runs/exp/ms_${run}_s$s" 2>&1 | grep -v "it/s\|^Loading\|Writing" | tail -3
done; done
for run in $runs; do
  echo "== sft_fit $run $(date +%T)"
  .venv/bin/python benchmarks/sft_fit.py $d/$run.yaml runs/exp/$run $d/sft_fit_$run.json 8 1 2>&1 | grep -v "it/s\|^Loading" | tail -3
done
echo "END $(date +%T)"
