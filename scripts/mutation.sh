#!/usr/bin/env bash
# Mutation testing of the core modules (issue 16), by hand; NOT run in CI (it is slow: minutes to
# an hour per module on 2 cores).
#
#   bash scripts/mutation.sh                 # every module below, one after the other, then the table
#   bash scripts/mutation.sh decide work     # only these modules
#   bash scripts/mutation.sh --table         # print the table of the last runs, run nothing
#   bash scripts/mutation.sh --rerun decide  # after adding tests: re-test only the survivors (and
#                                            # the mutants no test reached) of the last run
#   MUTATION_JOBS=1 bash scripts/mutation.sh scenes   # parallel workers (default: 2)
#   MUTATION_TESTS=/tmp/old/tests bash scripts/mutation.sh work   # score another version of the tests
#
# Tool: mutmut 3 (pinned in requirements-mutation.txt, installed here on first use into .venv).
# Each module gets its own work folder .mutation/<module>/ (git-ignored), in which mutmut copies
# the packages into mutants/, mutates only that module's file, and runs only the fast test files
# listed below (no Ray cluster, no training runs, no `slow` tests). A second run reuses the
# results of mutants whose function did not change; `rm -rf .mutation/<module>` starts afresh.
# Survivors: cd .mutation/<module> && ../../.venv/bin/mutmut results / show <name>.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
MUTMUT=$ROOT/.venv/bin/mutmut

if [ ! -x "$MUTMUT" ]; then
  "$PY" -m pip install -q -r requirements-mutation.txt
fi
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled

# module -> FILE to mutate, TESTS to run (KSEL: a pytest -k selection in them), ONLY: mutant-name
# filter (empty: all the mutants of the file)
declare -A FILE TESTS KSEL ONLY
FILE[decide]=ifmdm_data/filter/decide.py
TESTS[decide]="tests/test_decide.py"
FILE[scenes]=ifmdm_data/filter/scenes.py
TESTS[scenes]="tests/test_signals.py tests/test_mutation_holes.py"
# (not the cut-time test of test_mutation_holes.py: it runs analyse on encoded clips, ~4 s a mutant)
KSEL[scenes]="not segment_after_a_cut"
FILE[work]=ifmdm_data/filter/work.py
TESTS[work]="tests/test_mutation_holes.py"
KSEL[work]="not segment_after_a_cut and not steady_pan and not local_flow"
# stage1: only the local-flow module is scored (mask normalisation, group weights, warps); the rest of
# stage 1 is the StyleGAN-style generator, covered by the training tests, far too slow to mutate.
FILE[stage1]=ifmdm_model/stage1/local_flow.py
TESTS[stage1]="tests/test_stage1.py tests/test_mutation_holes.py"
# (the local-flow tests: the whole-model ones take ~25 s a mutant here)
KSEL[stage1]="mask_normalisation or local_flow or coarse_to_fine"
ONLY[stage1]="ifmdm_model.stage1.local_flow.x_log_spatial_masks__mutmut_* ifmdm_model.stage1.local_flow.x_normalise_masks__mutmut_* ifmdm_model.stage1.local_flow.xǁLocalFlowModuleǁ*"
FILE[diffusion]=ifmdm_model/stage2/diffusion.py
TESTS[diffusion]="tests/test_stage2.py tests/test_diffusion_behaviour.py"
# (not the three learning tests: 4-40 s each)
KSEL[diffusion]="not generated_std_follows_m_sigma and not tiny_model_learns and not learning_checks"
FILE[infer_cli]=ifmdm_model/cli/infer.py
TESTS[infer_cli]="tests/test_infer.py"
# (the argument checks and their mapping onto generate/reenact, in process; not the end-to-end
# generations nor the subprocess checks of test_infer.py, seconds each)
KSEL[infer_cli]="test_help or test_args_"
# infer (ifmdm_model/infer/options.py): only its option parsing (--dtype's autocast,
# --motion-mean); generate() itself is covered by the end-to-end tests, minutes per mutant
FILE[infer]=ifmdm_model/infer/options.py
TESTS[infer]="tests/test_infer_options.py"
KSEL[infer]="test_option_"
ONLY[infer]="ifmdm_model.infer.options.x_motion_mean_arg__mutmut_* ifmdm_model.infer.options.x_autocast_for__mutmut_*"
ALL=(decide scenes work stage1 diffusion infer_cli infer)

table() {
  "$PY" - "$@" <<'EOF'
import fnmatch, json, sys
from pathlib import Path
mods = sys.argv[1:]
print(f"{'module':<11} {'file':<34} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'no test':>7} {'not run':>7} {'other':>5} {'score':>6}")
for spec in mods:
    mod, file, only = spec.split("|")
    meta = Path(".mutation") / mod / "mutants" / (file + ".meta")
    if not meta.exists():
        print(f"{mod:<11} {file:<34} (not run)")
        continue
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    pats = only.split()
    if pats:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in pats)}
    n = {"killed": 0, "survived": 0, "timeout": 0, "no tests": 0, "not run": 0, "other": 0}
    for v in codes.values():
        s = {1: "killed", 3: "killed", 37: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout",
             152: "timeout", 255: "timeout", 5: "no tests", 33: "no tests", None: "not run"}.get(v, "other")
        n[s] += 1
    total = len(codes)
    # a timeout counts as killed (the mutant made the tests hang); "no test": no selected test runs
    # it; "not run": the run was stopped before it; "other": a crash, a type-check kill (counted killed)
    score = 100.0 * (n["killed"] + n["timeout"]) / total if total else float("nan")
    name = mod + ("*" if pats else "")
    print(f"{name:<11} {file:<34} {total:>7} {n['killed']:>6} {n['survived']:>8} {n['timeout']:>7} {n['no tests']:>7} {n['not run']:>7} {n['other']:>5} {score:>5.1f}%")
EOF
}

survivors() {   # module file filter -> names of the survived / untested mutants of the last run
  "$PY" - "$@" <<'EOF'
import fnmatch, json, sys
from pathlib import Path
mod, file, only = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
meta = Path(".mutation") / mod / "mutants" / (file + ".meta")
if meta.exists():
    pats = only.split()
    for k, v in json.loads(meta.read_text())["exit_code_by_key"].items():
        if v in (0, 5, 33, None) and (not pats or any(fnmatch.fnmatch(k, p) for p in pats)):
            print(k)
EOF
}

specs=()
mods=()
run=1
rerun=0
for a in "$@"; do
  case "$a" in
    --table) run=0 ;;
    --rerun) rerun=1 ;;
    *) mods+=("$a") ;;
  esac
done
[ ${#mods[@]} -eq 0 ] && mods=("${ALL[@]}")
for m in "${mods[@]}"; do
  [ -n "${FILE[$m]:-}" ] || { echo "unknown module '$m' (one of: ${ALL[*]})" >&2; exit 2; }
  specs+=("$m|${FILE[$m]}|${ONLY[$m]:-}")
done

if [ $run = 1 ]; then
  for m in "${mods[@]}"; do
    w=.mutation/$m
    mkdir -p "$w"
    for p in ifmdm_data ifmdm_model pyproject.toml; do ln -sfn "$ROOT/$p" "$w/$p"; done
    # MUTATION_TESTS: another tests/ folder (e.g. an older commit's, to compare scores)
    ln -sfn "$(realpath "${MUTATION_TESTS:-$ROOT/tests}")" "$w/tests"
    # mutmut copies the packages into mutants/ once and re-mutates only the mutated file when it
    # changes: refresh the other files, edited since the last run
    if [ -d "$w/mutants" ]; then
      while IFS= read -r f; do
        cmp -s "$f" "$w/mutants/$f" || { mkdir -p "$(dirname "$w/mutants/$f")"; cp -p "$f" "$w/mutants/$f"; }
      done < <(find ifmdm_data ifmdm_model -type f ! -path "*/__pycache__/*" ! -path "${FILE[$m]}")
    fi
    # conftest.py finds ../shared/media next to the project root (mutants/ here)
    [ -e "$ROOT/../shared" ] && ln -sfn "$ROOT/../shared" "$w/shared"
    read -r -a targs <<< "${TESTS[$m]}"
    [ -n "${KSEL[$m]:-}" ] && targs+=(-k "${KSEL[$m]}")
    {
      echo "[mutmut]"
      echo "source_paths ="
      echo "    ifmdm_data"
      echo "    ifmdm_model"
      echo "only_mutate = ${FILE[$m]}"
      echo "pytest_add_cli_args ="
      for a in -p no:cacheprovider -m "not slow"; do echo "    $a"; done
      echo "pytest_add_cli_args_test_selection ="
      for a in "${targs[@]}"; do echo "    $a"; done
      # torch and OpenMP are not fork-safe after a test ran: fork each mutant from a clean server
      echo "process_isolation = forkserver"
    } > "$w/setup.cfg"
    echo "=== $m: mutating ${FILE[$m]} against ${TESTS[$m]} ${KSEL[$m]:+-k '${KSEL[$m]}'}"
    read -r -a only <<< "${ONLY[$m]:-}"
    if [ $rerun = 1 ] && [ "${FILE[$m]}" -nt "$w/mutants/${FILE[$m]}" ]; then
      # the module changed since: a plain run first tests the mutants of its changed functions
      echo "    ${FILE[$m]} changed: testing the mutants of its changed functions first"
      (cd "$w" && "$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" "${only[@]}") > "$w/run.log" 2>&1 || true
    fi
    if [ $rerun = 1 ]; then
      # killed mutants stay killed when tests are only added: re-test the others, with fresh
      # stats (which test runs which function) so that the new tests are picked up
      mapfile -t only < <(survivors "$m" "${FILE[$m]}" "${ONLY[$m]:-}")
      [ ${#only[@]} -gt 0 ] || { echo "=== $m: no survivors to re-test"; continue; }
      rm -f "$w/mutants/mutmut-stats.json"
      echo "    re-testing ${#only[@]} mutants"
    fi
    # the full output (a spinner per mutant) goes to .mutation/<module>/run.log
    rc=0
    (cd "$w" && "$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" "${only[@]}") > "$w/run.log" 2>&1 || rc=$?
    tr '\r' '\n' < "$w/run.log" | grep -aE "^ *done|mutations/second|Failed|failed|Error" | tail -5 || true
    [ $rc = 0 ] || echo "mutmut exited $rc for $m: see $w/run.log"
  done
fi
echo
echo "Mutation score (killed + timeout over all mutants; * = only the functions named in scripts/mutation.sh)"
table "${specs[@]}"
