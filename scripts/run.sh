#!/usr/bin/env bash
# `make run`: the whole pipeline, keeping going past a failed job (Snakemake's --keep-going), then --
# if any job failed -- the ledger and the site from whatever exists, each missing result shown as its
# track's failure with the job's log tail; exits non-zero naming the failed jobs.  The last lines
# say where the site is and how to browse it.  Arguments go to snakemake.
set -uo pipefail
cd "$(dirname "$0")/.."
CORES=${CORES:-2}
FAILED=results/run/failed_jobs.json  # bcr.contracts.FAILED_JOBS
RUN_CONFIG=results/run/config.yaml
start=$SECONDS
mkdir -p logs results/run
rm -f "$FAILED"  # a previous run's failures are not this run's
snakemake --cores "$CORES" --rerun-incomplete --printshellcmds --keep-going "$@"
rc=$?
minutes() { printf '%d min %02d s' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }
if [[ $rc -ne 0 ]]; then
  echo
  echo "[run] snakemake exited $rc after $(minutes); building the ledger and the site from what exists"
  if [[ -f "$RUN_CONFIG" ]]; then
    bcr site failures --out "$FAILED" || true
    bcr site ledger --config "$RUN_CONFIG" --results results --out results/ledger.parquet \
      --benchmarks results/run/benchmarks.parquet >logs/evaluate_claims.log 2>&1 \
      || echo "[run] the ledger failed too: logs/evaluate_claims.log"
    bcr site build --config "$RUN_CONFIG" --repo . --results results --ledger results/ledger.parquet \
      >logs/build_site.log 2>&1 || echo "[run] the site build failed too: logs/build_site.log"
  fi
fi
echo
if [[ -f results/site/index.html ]]; then
  echo "[run] site: results/site/index.html -- browse it with: make serve (http://127.0.0.1:8000/)"
fi
if [[ $rc -ne 0 ]]; then
  jobs=$(python3 -c "import json,sys; print(', '.join(j['rule'] for j in json.load(open(sys.argv[1]))['jobs']))" "$FAILED" 2>/dev/null)
  echo "[run] FAILED after $(minutes): ${jobs:-see the Snakemake log above}; the site shows what is missing and why"
else
  echo "[run] done in $(minutes)"
fi
exit $rc
