#!/bin/bash
# 10,000 `sleep` workers through daemon SIGKILLs (red team round 3): start, SIGKILL the daemon
# 0.7 s into `stop all`, restart it (every instance must stay stopped, none left running),
# `start all`, SIGKILL 1.5 s into it, restart (exactly 10,000 running, adopted or started,
# none twice), shutdown (no process, /dev/shm name or cgroup left). Prints what it saw.
# Run under the bench lock, from the repository root, as root:
#     flock /tmp/pv-bench.lock timeout 295 bash bench/rt3_kill_10k.sh
set -u
TREE=$(cd "$(dirname "$0")/.." && pwd)
S=$TREE/.venv/bin
DIR=$(mktemp -d /tmp/pvb-rt3-XXXXXX)
cat > "$DIR/c.yaml" <<YAML
supervisor: {log_dir: $DIR/logs, block_prefix: pvb-rt3-$$}
workers:
  pvb_s: {command: [sleep, "99997"], numprocs: 10000, start_seconds: 1, stdout: null, stderr: null}
YAML
C="$S/supervisorctl -c $DIR/c.yaml --timeout 120"
n() { ps -eo args | grep -c '^sleep 99997$'; }
count() { $C status 2>/dev/null | grep -c " $1 "; }
start_d() { setsid "$S/supervisord" -c "$DIR/c.yaml" > "$DIR/$1" 2>&1 & echo $! > "$DIR/d.pid"; }
until_n() { timeout "$2" bash -c "while [ \$($C status 2>/dev/null | grep -c ' $1 ') -lt 10000 ]; do sleep 1; done"; }
start_d d1.log; until_n RUNNING 200
echo "$(date +%T) up: $(n) sleeps"
$C stop all > /dev/null 2>&1 & sleep 0.7; kill -9 "$(cat "$DIR/d.pid")"; sleep 0.5
echo "$(date +%T) daemon killed 0.7 s into stop all: $(n) sleeps left"
start_d d2.log; until_n STOPPED 120
echo "$(date +%T) next daemon: $(n) sleeps (want 0), STOPPED $(count STOPPED), RUNNING $(count RUNNING)"
$C start all > /dev/null 2>&1 & sleep 1.5; kill -9 "$(cat "$DIR/d.pid")"; sleep 0.5
echo "$(date +%T) daemon killed 1.5 s into start all: $(n) sleeps"
start_d d3.log; until_n RUNNING 150; sleep 2
echo "$(date +%T) next daemon: $(n) sleeps (want 10000), RUNNING $(count RUNNING)"
grep -ho "[0-9]* instances, [0-9]* adopted" "$DIR"/d3.log
$C shutdown > /dev/null; sleep 2
P=pvb-rt3-$$
echo "$(date +%T) after shutdown: $(n) sleeps, $(ls /dev/shm | grep -c "^$P") shm names, $(ls -d /sys/fs/cgroup/unified/"$P"* 2>/dev/null | wc -l) cgroups, $(cat "$DIR"/d*.log | grep -c Traceback) tracebacks"
rm -rf "$DIR"
