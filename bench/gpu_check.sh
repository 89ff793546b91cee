#!/usr/bin/env bash
# The GPU throughput check on a GPU machine: writes its Markdown table to RESULT.md (under 5 minutes on one
# H100). Options after RESULT.md go to gpu_check.py (e.g. --batch-size 512); PYTHON picks the interpreter.
#   bash bench/gpu_check.sh RESULT.md [gpu_check.py options]
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash $0 RESULT.md [gpu_check.py options]" >&2
    exit 2
fi
output=$1
shift
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" --output "$output" "$@"
