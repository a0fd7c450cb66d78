#!/usr/bin/env bash
# CI-triggered retraining (called by .github/workflows/retrain.yml; runs the same anywhere):
# pull what the DVC remote has, `dvc repro`, write `dvc metrics diff` and the gate record to the job
# summary, and push artifacts to the remote ONLY when the gate blessed the candidate.
# Exit: 0 = blessed and pushed; 1 = repro failed or the gate refused (nothing pushed).
set -uo pipefail
cd "$(dirname "$0")/.."
SUMMARY="${GITHUB_STEP_SUMMARY:-/dev/stdout}"
DVC="${DVC:-dvc}"

# An empty remote (first run) or a remote missing some outputs is not an error: repro rebuilds them.
$DVC pull --allow-missing --quiet 2>/dev/null || echo "dvc pull: nothing (or not everything) to pull"

$DVC repro
repro_rc=$?

blessed=$(python - <<'PY'
import json, pathlib
p = pathlib.Path("data/gate/blessing.json")
print("yes" if p.exists() and json.loads(p.read_text()).get("blessed") else "no")
PY
)

{
  echo "## funnelflow retraining"
  echo
  echo "dvc repro exit code: ${repro_rc}; gate blessed: ${blessed}"
  echo
  echo "### Metrics (workspace vs HEAD)"
  $DVC metrics diff --md --all 2>/dev/null || echo "(no metrics to compare)"
  echo
  if [ -f data/gate/blessing.md ]; then cat data/gate/blessing.md; else echo "(the gate did not run)"; fi
  echo
} >> "$SUMMARY"

if [ "$repro_rc" -eq 0 ] && [ "$blessed" = "yes" ]; then
  $DVC push --quiet && echo "artifacts pushed to the DVC remote" >> "$SUMMARY"
  exit $?
fi
echo "not pushed: repro failed or the gate refused the candidate" >> "$SUMMARY"
exit 1
