cd /work/main
for s in 0 1; do for g in false true; do
  echo "== grammar $g seed $s $(date +%T)"
  .venv/bin/python benchmarks/eval_run.py /tmp/val/g${g}_s$s.yaml runs/exp/val96 0 runs/exp/val96_g${g}_s$s 2>&1 | grep -v "it/s\|^Loading\|Writing" | tail -3
done; done
echo END
