# Sourced by the trace scripts (root, tracefs): records a 50 ms ftrace window.
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T

# trace_50ms FILE "EVENTS" "FILTERED_EVENTS" FILTER: writes 50 ms of EVENTS (every task) and
# of FILTERED_EVENTS (only where FILTER holds, e.g. "common_pid == 123") to FILE.
trace_50ms() {
    local out=$1 events=$2 filtered=$3 filter=$4 e
    echo 0 > $T/tracing_on; echo > $T/trace; echo 32768 > $T/buffer_size_kb
    for e in $filtered; do echo "$filter" > $T/events/$e/filter; done
    for e in $events $filtered; do echo 1 > $T/events/$e/enable; done
    echo 1 > $T/tracing_on; sleep 0.05; echo 0 > $T/tracing_on
    for e in $events $filtered; do echo 0 > $T/events/$e/enable; done
    for e in $filtered; do echo 0 > $T/events/$e/filter; done
    cat $T/trace > "$out"; echo > $T/trace
}
