# Sourced by the benchmark scripts (needs OUT and TIME_SCALE set).
# run NAME SECONDS CMD...: CMD under a time limit of SECONDS x TIME_SCALE, its output into $OUT/NAME.log and its exit
# status into $OUT/NAME.rc; a failing step is recorded (with the end of its log) and the script goes on.
run() {
  local name=$1 secs=$(($2 * TIME_SCALE)); shift 2
  echo "$(date -u +%T) $name (at most ${secs}s): $*"
  local rc=0
  timeout -k 15 "$secs" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  echo "$rc" > "$OUT/$name.rc"
  if [ "$rc" != 0 ]; then
    echo "$(date -u +%T) $name failed (exit $rc; 124: time limit), the end of $OUT/$name.log:"
    tail -5 "$OUT/$name.log"
  fi
}
