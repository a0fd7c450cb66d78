#!/usr/bin/env bash
# CI-triggered retraining (.github/workflows/retrain.yml runs it; it runs the same in any clone):
#   1. `dvc pull`: the raw store, the registry with the champion to gate against, and every other
#      cached out of the last blessed run (dvc.lock in git says which).
#   2. `dvc repro`: the gate stage records its decision (reports/gate/gate.json) without failing;
#      export and promote do nothing for a refused candidate.
#   3. Blessed only: `dvc push` first (a commit never names data the remote lacks), then commit
#      dvc.lock and reports/ (landed days' pointers are committed by whoever lands them), tag the
#      champion the GTO way (funnel-model@vN.0.0, assigned to stage prod), push commit and tags.
#   Refused or failed: nothing is committed or pushed; exit 1 with the reason in the job summary.
# Env: GITHUB_STEP_SUMMARY (default stdout), DVC / GTO (commands), GIT_REMOTE (default origin; none
# configured: commit and tag locally only), GIT_BRANCH (default GITHUB_REF_NAME, else the current branch).
set -euo pipefail
cd "$(dirname "$0")/.."
SUMMARY="${GITHUB_STEP_SUMMARY:-/dev/stdout}"
DVC="${DVC:-dvc}"
GTO="${GTO:-gto}"
GIT_REMOTE="${GIT_REMOTE:-origin}"
ARTIFACT=funnel-model
PYTHON="${PYTHON:-python}"

note() { echo "$*" >> "$SUMMARY"; }
refuse() {
  note ""
  note "**Not committed, nothing pushed:** $1"
  exit 1
}
json_get() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

note "## funnelflow retraining"
# An empty remote (first run) is not an error: repro builds what it lacks.
$DVC pull --allow-missing --quiet || note "dvc pull: not everything could be pulled; repro rebuilds the rest"

$DVC repro || refuse "\`dvc repro\` failed (bad data, validation or a crash: see the job log)"

note ""
note "### Metrics (this run vs HEAD)"
$DVC metrics diff --md >> "$SUMMARY" 2>&1 || note "(no metrics to compare)"
note ""
cat data/gate/blessing.md >> "$SUMMARY"
note ""
[ "$(json_get reports/gate/gate.json blessed)" = 1 ] || refuse "the gate refused the candidate (table above)"

version=$(json_get data/registry/champion.json version)   # vNNNN
git add dvc.lock reports
if git diff --cached --quiet; then
  note "Blessed, but nothing changed since HEAD: nothing to commit."
  exit 0
fi
$DVC push --quiet
git commit -q -m "retrain: champion ${version} (blessed by the gate)"
tags=()
semver="v$((10#${version#v})).0.0"
if ! git rev-parse -q --verify "refs/tags/${ARTIFACT}@${semver}" >/dev/null; then
  $GTO register "$ARTIFACT" --version "$semver" --message "registry ${version}" >/dev/null
  $GTO assign "$ARTIFACT" --version "$semver" --stage prod --message "champion ${version}" >/dev/null
  mapfile -t tags < <(git tag --points-at HEAD --list "${ARTIFACT}*")
fi
if git remote get-url "$GIT_REMOTE" >/dev/null 2>&1; then
  branch="${GIT_BRANCH:-${GITHUB_REF_NAME:-$(git branch --show-current)}}"
  git push -q "$GIT_REMOTE" "HEAD:refs/heads/${branch}" "${tags[@]/#/refs/tags/}"
  note "Blessed: champion ${version} (${ARTIFACT}@${semver}, prod) pushed to the DVC remote and ${GIT_REMOTE}/${branch}."
else
  note "Blessed: champion ${version} (${ARTIFACT}@${semver}, prod) pushed to the DVC remote; no git remote ${GIT_REMOTE}: committed locally."
fi
