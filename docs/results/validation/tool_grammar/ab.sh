# The A/Bs of docs/training.md "Constrained tool calls", from the repository root, after training the weights with
# `stateset-agents train docs/results/validation/tool_grammar/val96.yaml`:
#   bash docs/results/validation/tool_grammar/ab.sh val96    # first run (constrained turns not yet cached)
#   bash docs/results/validation/tool_grammar/ab.sh val96c   # after the engine change (7042d40)
#   bash docs/results/validation/tool_grammar/ab.sh val96r "true grounded"   # grounded references (2026-12-04)
#   bash docs/results/validation/tool_grammar/ab.sh val96p "true grounded"   # with the pack's id patterns (2026-12-04)
# Arms (default "false true": g{ARM}_s{SEED}.yaml) alternate per seed; each writes runs/exp/PREFIX_g{ARM}_s{0,1}/eval/.
prefix=${1:?usage: ab.sh OUTPUT_PREFIX [ARMS]}
arms=${2:-false true}
for s in 0 1; do for g in $arms; do
  echo "== grammar $g seed $s $(date +%T)"
  .venv/bin/python benchmarks/eval_run.py docs/results/validation/tool_grammar/g${g}_s$s.yaml runs/exp/val96 0 \
    "runs/exp/${prefix}_g${g}_s$s" 2>&1 | grep -v "it/s\|^Loading\|Writing" | tail -3
done; done
echo END
