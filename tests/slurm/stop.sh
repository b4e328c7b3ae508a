#!/usr/bin/env bash
# stop.sh DIR -- stop the cluster started by start.sh DIR.
# Cancels remaining jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd and
# munged (SIGTERM, then SIGKILL after a grace period).  Safe to run twice or
# on a half-started cluster.  Keeps DIR (state, logs, DB) so start.sh can
# reuse it; delete DIR yourself if you want a clean slate.
set -uo pipefail

log() { echo "stop.sh: $*" >&2; }
[ $# -eq 1 ] || { echo "usage: stop.sh DIR" >&2; exit 1; }
[ -d "$1" ] || { log "$1 does not exist: nothing to stop"; exit 0; }
DIR=$(cd "$1" && pwd -P)
export SLURM_CONF="$DIR/slurm.conf"
GRACE=${SLURM_LOCAL_STOP_GRACE:-20}
rc=0

pid_of() { # pidfile expected-comm -> prints pid if alive and matching
    local pf=$1 comm=$2 pid
    [ -s "$pf" ] || return 1
    pid=$(cat "$pf" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # a zombie (exited, not yet reaped by pid 1) does not count
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    echo "$pid"
}
wait_gone() { # pid seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [ -d "/proc/$1" ] || return 0
        # exited but not yet reaped (pid 1 in containers may reap slowly)
        [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] || return 0
        sleep 0.1
    done
    return 1
}
stop_daemon() { # name pidfile comm
    local pid
    pid=$(pid_of "$2" "$3") || { log "$1 not running"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    if wait_gone "$pid" "$GRACE"; then
        log "$1 (pid $pid) stopped"
    else
        log "$1 (pid $pid) did not exit after ${GRACE}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 5 || { log "ERROR: could not kill $1 (pid $pid)"; rc=1; }
    fi
    rm -f "$2"
}

# 1. cancel jobs while the daemons are still up, so that job processes die
if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null && [ -f "$SLURM_CONF" ]; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for ((i = 0; i < 150; i++)); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

# 2. daemons, clients first
stop_daemon slurmd "$DIR/run/slurmd.pid" slurmd
stop_daemon slurmctld "$DIR/run/slurmctld.pid" slurmctld
stop_daemon slurmdbd "$DIR/run/slurmdbd.pid" slurmdbd
stop_daemon mariadbd "$DIR/mysql/mysqld.pid" mariadbd
stop_daemon munged "$DIR/munge/munged.pid" munged

# 3. leftovers of this cluster: slurmstepd survives slurmd's exit by design
#    (e.g. after slurmctld/slurmd were killed and jobs could not be
#    cancelled).  Identified by SLURM_CONF in their environment (inherited
#    from slurmd); kill each one together with its job processes.
descendants() { # pid -> all descendant pids
    local kids k
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null)
    for k in $kids; do
        echo "$k"
        descendants "$k"
    done
}
for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF"; then
        pid=${p#/proc/}
        tree=$(descendants "$pid" | tr '\n' ' ')
        log "killing leftover slurmstepd $pid and its job processes: $tree"
        kill -STOP "$pid" 2>/dev/null
        # shellcheck disable=SC2086
        kill -KILL $tree "$pid" 2>/dev/null
    fi
done

[ $rc = 0 ] && log "all stopped"
exit $rc
