#!/usr/bin/env bash
# The GPU part of the stress suite (issue #8), for a machine with an NVIDIA GPU:
#   soak               valet-stress --backend cuda --threads 16 --seconds 240 --json
#   memcheck-stress    compute-sanitizer --tool memcheck over a short valet-stress --backend cuda run
#   memcheck-gpu-tests compute-sanitizer --tool memcheck over valet-gpu-tests (tests/gpu)
# Every output is saved to OUT_DIR (at most 8 files: soak.json, soak.err, memcheck-stress.log,
# memcheck-stress.out, memcheck-gpu-tests.log, memcheck-gpu-tests.out, environment.txt,
# summary.txt); the summary (the JSON figures, memcheck's ERROR SUMMARY lines) is printed at the
# end and kept in OUT_DIR/summary.txt.
#
#   tests/stress/run_gpu_soak.sh BIN_DIR OUT_DIR [STEPS]
#     BIN_DIR  holds valet-stress and valet-gpu-tests (a CUDA build's bin/, or a copy of them);
#              a libtbb.so.12 beside them is used where the machine has none.
#     STEPS    comma-separated: soak, memcheck-stress, memcheck-gpu-tests; `memcheck` = both
#              memcheck steps; `all` (default) = every step. Each step runs under `timeout`, so a
#              call's length is bounded: soak ~4.5 min, each memcheck step at most MEMCHECK_TIMEOUT.
#
# Environment (defaults in brackets):
#   SOAK_THREADS [16] SOAK_SECONDS [240] SOAK_ARGS [""]      extra valet-stress flags for the soak
#   MEMCHECK_THREADS [4] MEMCHECK_SECONDS [20] MEMCHECK_CAPACITY [256MiB]
#   MEMCHECK_TIMEOUT [240]   seconds per memcheck step before it is stopped (counted as failed)
#   MEMCHECK_GTEST_FILTER [*]   gtest filter for valet-gpu-tests under memcheck
#   MEMCHECK_ARGS [--leak-check full]   further compute-sanitizer options
#   BACKEND [cuda]           valet-stress --backend; `host` only to try this script where there is no GPU
#   COMPUTE_SANITIZER        path of compute-sanitizer; else PATH, $CUDA_HOME/bin, /usr/local/cuda/bin,
#                            /usr/local/cuda-*/bin, /opt/cuda/bin are searched
#
# The binaries load libcuda.so.1 with dlopen at run time and take every entry point through
# cuGetProcAddress. compute-sanitizer should need nothing special for that (not yet confirmed on
# a GPU): the driver loads the sanitizer's injection library when it initializes (cuInit),
# however the driver itself was loaded, and the tool intercepts the driver API from inside. A
# "no ERROR SUMMARY line" or a run that sees no kernel launches would say otherwise.
# --target-processes all is not needed (neither binary starts child processes); it is passed
# anyway so that nothing is missed.
#
# Exit status: 0 when every step that ran passed (the stress runs' "errors" is 0, the tests
# passed and none skipped, memcheck reported 0 errors), 1 otherwise.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | grep '^#' >&2; exit 2; }
[[ $# -ge 2 ]] || usage
bin=$(cd "$1" 2>/dev/null && pwd) || { echo "run_gpu_soak.sh: no such folder: $1" >&2; exit 2; }
out=$2
steps=${3:-all}
mkdir -p "$out" && out=$(cd "$out" && pwd)

soak_threads=${SOAK_THREADS:-16}
soak_seconds=${SOAK_SECONDS:-240}
mc_threads=${MEMCHECK_THREADS:-4}
mc_seconds=${MEMCHECK_SECONDS:-20}
mc_capacity=${MEMCHECK_CAPACITY:-256MiB}
mc_timeout=${MEMCHECK_TIMEOUT:-240}
mc_filter=${MEMCHECK_GTEST_FILTER:-*}
backend=${BACKEND:-cuda}

want() { [[ ",$steps," == *",all,"* || ",$steps," == *",$1,"* ]] || { [[ $1 == memcheck-* && ",$steps," == *",memcheck,"* ]]; }; }
for s in ${steps//,/ }; do
  case $s in all | soak | memcheck | memcheck-stress | memcheck-gpu-tests) ;; *) echo "run_gpu_soak.sh: unknown step '$s'" >&2; usage ;; esac
done

# A libtbb.so.12 carried beside the binaries serves machines without Debian's TBB.
[[ -e $bin/libtbb.so.12 ]] && export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

summary=()
failed=0
note() { summary+=("$*"); }
fail() { summary+=("FAILED: $*"); failed=1; }

need_binary() {
  local b=$bin/$1
  if [[ ! -x $b ]]; then fail "$1 not found in $bin"; return 1; fi
  local missing
  missing=$(ldd "$b" 2>/dev/null | grep "not found" || true)
  if [[ -n $missing ]]; then fail "$1: shared libraries not found: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')(copy libtbb.so.12 into $bin)"; return 1; fi
  return 0
}

find_sanitizer() {
  local c
  for c in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
           "${CUDA_HOME:+$CUDA_HOME/bin/compute-sanitizer}" "${CUDA_PATH:+$CUDA_PATH/bin/compute-sanitizer}" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           $(printf '%s\n' /usr/local/cuda-*/bin/compute-sanitizer | sort -rV) /opt/cuda/bin/compute-sanitizer; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  return 1
}

# The figures of one valet-stress --json line, for the summary.
json_figures() {
  python3 - "$1" <<'EOF' 2>/dev/null || { echo "    (python3 missing or no JSON line; raw:)"; grep -m1 '^{' "$1" | cut -c1-600 | sed 's/^/    /'; }
import json, sys
line = next(l for l in open(sys.argv[1]) if l.startswith("{"))
j = json.loads(line)
gib = lambda b: f"{b / 2**30:.1f} GiB"
print(f"    backend {j['backend']}, {j['threads']} threads, {j['seconds']:.1f} s, seed {j['seed']}, capacity {j['capacity'] >> 20} MiB")
print(f"    ops {j['ops']:,} ({j['ops_per_second']:,.0f}/s): allocations {j['allocations']:,}, frees {j['frees']:,}, "
      f"resizes {j['resizes']:,}, host pins {j['host_pins']:,}, stream pins {j['stream_pins']:,}, "
      f"exchanges {j['exchanges']:,}, out of memory {j['out_of_memory']:,}")
print(f"    compaction cycles {j['compaction_cycles']:,} ({j['emergency_cycles']:,} emergency), objects moved "
      f"{j['objects_moved']:,} ({gib(j['bytes_moved'])}), pages freed {j['pages_freed']:,}, pages meshed {j.get('pages_meshed', 0):,}")
print(f"    bytes verified {gib(j['bytes_verified'])} in {j['objects_verified']:,} object checks, "
      f"{j['checkpoints']:,} checkpoints, faults injected {j['faults_injected']:,}, errors {j['errors']}")
EOF
}

# Checks a valet-stress run: exit status, not skipped, a JSON line with "errors": 0.
check_stress() {
  local name=$1 rc=$2 stdout=$3
  if grep -q '^skipped:' "$stdout"; then fail "$name: skipped, no usable GPU ($(grep -m1 '^skipped:' "$stdout"))"; return; fi
  if ((rc == 124)); then fail "$name: stopped by timeout"; return; fi
  if ! grep -q '^{' "$stdout"; then fail "$name: exit $rc, no JSON line (see the .err/.log file)"; return; fi
  note "$name: exit $rc"
  summary+=("$(json_figures "$stdout")")
  grep -q '"errors":0[,}]' "$stdout" || fail "$name: errors is not 0"
  ((rc == 0)) || fail "$name: exit status $rc"
}

# compute-sanitizer's own verdict: its ERROR SUMMARY line and any API errors it reported.
check_memcheck() {
  local name=$1 rc=$2 log=$3
  local line
  line=$(grep -m1 "ERROR SUMMARY" "$log" || true)
  note "$name: compute-sanitizer exit $rc; ${line:-no ERROR SUMMARY line (did the run finish?)}"
  local api
  api=$(grep -c "Program hit" "$log" || true)
  ((api == 0)) || note "    of which CUDA API errors reported (\"Program hit ...\"): $api; see the log: a call expected to fail? (MEMCHECK_ARGS='--leak-check full --report-api-errors no' leaves them out)"
  if ((rc == 124)); then fail "$name: stopped after MEMCHECK_TIMEOUT=$mc_timeout s"; fi
  [[ $line =~ ERROR\ SUMMARY:\ 0\ errors ]] || fail "$name: memcheck did not report 0 errors"
  ((rc == 0)) || fail "$name: exit status $rc"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -n), $(nproc) cores"
  echo "bin: $bin"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  cs=$(find_sanitizer) && { echo "compute-sanitizer: $cs"; "$cs" --version 2>&1 | tail -n 2; } || echo "compute-sanitizer: not found"
} >"$out/environment.txt"
cat "$out/environment.txt"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)

if want soak && need_binary valet-stress; then
  echo "== soak: valet-stress --backend $backend --threads $soak_threads --seconds $soak_seconds --json ${SOAK_ARGS:-}" >&2
  # shellcheck disable=SC2086
  timeout -k 10 $((soak_seconds + 180)) "$bin/valet-stress" --backend "$backend" --threads "$soak_threads" \
    --seconds "$soak_seconds" --json ${SOAK_ARGS:-} >"$out/soak.json" 2>"$out/soak.err"
  check_stress "soak: valet-stress --backend $backend --threads $soak_threads --seconds $soak_seconds${SOAK_ARGS:+ $SOAK_ARGS}" $? "$out/soak.json"
fi

if want memcheck-stress || want memcheck-gpu-tests; then
  if ! cs=$(find_sanitizer); then
    fail "compute-sanitizer not found (set COMPUTE_SANITIZER=/path/to/compute-sanitizer): memcheck steps not run"
  else
    # --error-exitcode: a memcheck finding fails the step even where the program itself passed.
    # --leak-check full (MEMCHECK_ARGS): device allocations still held at the end are reported.
    # shellcheck disable=SC2206
    mc=("$cs" --tool memcheck --target-processes all --error-exitcode 97 ${MEMCHECK_ARGS---leak-check full})
    if want memcheck-stress && need_binary valet-stress; then
      args=(--backend "$backend" --threads "$mc_threads" --seconds "$mc_seconds" --capacity "$mc_capacity" --json)
      echo "== memcheck: valet-stress ${args[*]}" >&2
      timeout -k 10 "$mc_timeout" "${mc[@]}" --log-file "$out/memcheck-stress.log" "$bin/valet-stress" "${args[@]}" \
        >"$out/memcheck-stress.out" 2>&1
      rc=$?
      check_stress "valet-stress ${args[*]} under memcheck" "$rc" "$out/memcheck-stress.out"
      check_memcheck "memcheck over valet-stress" "$rc" "$out/memcheck-stress.log"
    fi
    if want memcheck-gpu-tests && need_binary valet-gpu-tests; then
      echo "== memcheck: valet-gpu-tests --gtest_filter=$mc_filter" >&2
      timeout -k 10 "$mc_timeout" "${mc[@]}" --log-file "$out/memcheck-gpu-tests.log" "$bin/valet-gpu-tests" \
        --gtest_filter="$mc_filter" >"$out/memcheck-gpu-tests.out" 2>&1
      rc=$?
      passed=$(grep -m1 '^\[  PASSED  \]' "$out/memcheck-gpu-tests.out" || true)
      skipped=$(grep -m1 '^\[  SKIPPED \] [0-9]' "$out/memcheck-gpu-tests.out" || true)
      note "valet-gpu-tests under memcheck: ${passed:-no PASSED line}${skipped:+; $skipped}"
      figures=$(grep -m1 '^launches ' "$out/memcheck-gpu-tests.out" || true)
      [[ -z $figures ]] || note "    $figures"
      [[ -n $skipped ]] && fail "valet-gpu-tests: tests skipped (no usable GPU?)"
      [[ -n $passed ]] || fail "valet-gpu-tests: did not pass"
      check_memcheck "memcheck over valet-gpu-tests" "$rc" "$out/memcheck-gpu-tests.log"
    fi
  fi
fi

{
  echo "== summary (${gpu:-no GPU found}; outputs in $out)"
  printf '%s\n' "${summary[@]}"
  ((failed)) && echo "result: FAILED" || echo "result: every step passed"
} | tee "$out/summary.txt"
exit "$failed"
