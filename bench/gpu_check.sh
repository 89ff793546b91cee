#!/usr/bin/env bash
# The GPU check, one script for a short GPU slot (about 6 minutes on one GPU): every user path run briefly
# (bench/acceptance.py: one PASS/FAIL line each), then the throughput table (bench/gpu_check.py), both into
# RESULT.md. Exits non-zero if a check fails. Options after RESULT.md go to gpu_check.py; PYTHON picks the
# interpreter. --dry-run: the same on the CPU at tiny sizes, the GPU-only checks skipped (the tests run it).
#   bash bench/gpu_check.sh [--dry-run] RESULT.md [gpu_check.py options]
set -uo pipefail
dry=()
if [ "${1:-}" = "--dry-run" ]; then
    dry=(--dry-run)
    shift
fi
if [ $# -lt 1 ]; then
    echo "usage: bash $0 [--dry-run] RESULT.md [gpu_check.py options]" >&2
    exit 2
fi
output=$1
shift
here=$(dirname "$0")
python=${PYTHON:-python}
throughput=("$@")
if [ ${#dry[@]} -gt 0 ] && [ ${#throughput[@]} -eq 0 ]; then
    throughput=(--device cpu --steps 2 --warmup 0 --batch-size 4 --input-size 64)
fi
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
"$python" "$here/acceptance.py" "${dry[@]}" --output "$parts/acceptance.md"
checks=$?
"$python" "$here/gpu_check.py" --output "$parts/throughput.md" "${throughput[@]}"
rates=$?
{ cat "$parts/acceptance.md"; echo; cat "$parts/throughput.md" 2>/dev/null; } > "$output"
if [ $checks -ne 0 ] || [ $rates -ne 0 ]; then
    echo "gpu_check: user paths exit $checks, throughput exit $rates; see $output" >&2
    exit 1
fi
