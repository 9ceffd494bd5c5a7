#!/usr/bin/env bash
# CUDA compiler launcher: run the nvcc command line given as arguments and keep its stderr
# (ptxas's -v resource report: registers, shared memory, stack, spill stores and loads) in
# <object>.ptxas.log beside the object file, while still showing it in the build output.
set -uo pipefail
object=""
previous=""
for argument in "$@"; do
  if [ "$previous" = "-o" ]; then object="$argument"; fi
  previous="$argument"
done
if [ -z "$object" ]; then exec "$@"; fi
log="$object.ptxas.log"
mkdir -p "$(dirname "$log")"
"$@" 2> >(tee "$log" >&2)
status=$?
wait
exit $status
