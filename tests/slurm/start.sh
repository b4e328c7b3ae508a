#!/usr/bin/env bash
# start.sh DIR -- start a one-node SLURM cluster on localhost, all state in DIR.
#
# Starts (as root, no systemd needed): munged, mariadbd, slurmdbd, slurmctld,
# slurmd.  Writes DIR/slurm.conf, DIR/slurmdbd.conf and DIR/env.sh, waits until
# the node is idle and the accounting DB answers, then prints on stdout:
#     export SLURM_CONF=DIR/slurm.conf
# (all progress/diagnostics go to stderr, so `eval "$(start.sh DIR)"` works).
#
# Idempotent: daemons that are already running from DIR are left alone; a
# second run after stop.sh reuses DIR (job ids and accounting DB persist).
#
# Environment knobs:
#   SLURM_LOCAL_PORT_BASE  first of 3 TCP ports on 127.0.0.1 (default 6817):
#                          slurmctld=BASE, slurmd=BASE+1, slurmdbd=BASE+2
#   SLURM_LOCAL_TIMEOUT    seconds to wait for each daemon (default 60)
#   SLURM_LOCAL_CLUSTER    ClusterName (default localcluster)
#   SLURM_LOCAL_PARTITION  partition name (default debug)
set -euo pipefail

die() {
    echo "start.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "start.sh: $*" >&2; }

[ $# -eq 1 ] || die "usage: start.sh DIR"
[ "$(id -u)" = 0 ] || die "must run as root (munged/slurmd/slurmctld run as root here)"

DIR=$(realpath -m "$1")
HOST=$(hostname -s)
BASE=${SLURM_LOCAL_PORT_BASE:-6817}
CTLD_PORT=$BASE
SLURMD_PORT=$((BASE + 1))
DBD_PORT=$((BASE + 2))
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
CLUSTER=${SLURM_LOCAL_CLUSTER:-localcluster}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}

for b in munged mungekey mariadbd slurmdbd slurmctld slurmd sinfo sacctmgr; do
    command -v "$b" >/dev/null || die "'$b' not found: run install.sh first"
done

# Unix socket paths are limited to 107 bytes.  The longest one is slurmd's
# per-step socket: $DIR/spool/<host>_<jobid>.<stepid> (ids up to 10 digits).
longest=$((${#DIR} + 7 + ${#HOST} + 22))
[ "$longest" -le 107 ] || die "DIR path too long for unix sockets (${#DIR} chars): use a shorter DIR, e.g. \$(mktemp -d /tmp/slurm.XXXX)"

mkdir -p "$DIR" || die "cannot create $DIR"
DIR=$(cd "$DIR" && pwd -P)
mkdir -p "$DIR"/{munge,mysql/data,state,spool,log,run,tmp}
# munged insists that the socket dir is world-executable (and warns about
# every ancestor that is not, e.g. pytest's 0700 /tmp/pytest-of-root; we pass
# --force so that only warns -- then only root can use the cluster).
chmod 755 "$DIR" "$DIR/munge" "$DIR/log" "$DIR/run"
chmod 700 "$DIR/mysql" "$DIR/state"
# jobs of non-root users need a writable tmp
chmod 1777 "$DIR/tmp"

export SLURM_CONF="$DIR/slurm.conf"
unset SLURM_JOB_ID SLURM_JOBID # in case we run inside a slurm job

# ---------------------------------------------------------------- helpers
pid_alive() { # pidfile expected-comm
    local pf=$1 comm=$2 pid
    [ -s "$pf" ] || return 1
    pid=$(cat "$pf" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # a zombie (exited, not yet reaped by pid 1) does not count
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now() { date +%s; }
T_START=$(date +%s%N)
elapsed() { echo "$((($(date +%s%N) - T_START) / 1000000)) ms"; }
proc_alive() { # pid
    [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# WATCH_PID / WATCH_PIDFILE: if set, the daemon being waited for; if it dies
# we fail at once instead of waiting for the timeout.
WATCH_PID=
WATCH_PIDFILE=
wait_for() { # description logfile command...
    local what=$1 logf=$2 pid
    shift 2
    local deadline=$(($(now) + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        local why=
        pid=$WATCH_PID
        if [ -z "$pid" ] && [ -n "$WATCH_PIDFILE" ] && [ -s "$WATCH_PIDFILE" ]; then
            pid=$(cat "$WATCH_PIDFILE" 2>/dev/null)
        fi
        if [ -n "$pid" ] && ! proc_alive "$pid"; then
            why="$what died during start-up (pid $pid)"
        elif [ "$(now)" -ge "$deadline" ]; then
            why="timed out after ${TIMEOUT}s waiting for $what"
        fi
        if [ -n "$why" ]; then
            echo "start.sh: ERROR: $why" >&2
            [ -f "$logf" ] && { echo "---- last lines of $logf:" >&2; tail -n 25 "$logf" >&2; }
            [ -n "${WATCH_HINT:-}" ] && echo "start.sh: hint: $WATCH_HINT" >&2
            exit 1
        fi
        sleep 0.2
    done
    WATCH_PID= WATCH_PIDFILE= WATCH_HINT=
    log "$what ready ($(elapsed))"
}
check_port_free() { # port daemon-pidfile comm
    if ! pid_alive "$2" "$3" && port_in_use "$1"; then
        die "port $1 on 127.0.0.1 is already in use by another process (set SLURM_LOCAL_PORT_BASE to use other ports, or stop the other cluster)"
    fi
}
start_checked() { # name logfile command...  -- run a daemonizing command
    local name=$1 logf=$2
    shift 2
    if ! "$@" >"$DIR/log/$name.stdout" 2>&1; then
        echo "start.sh: ERROR: $name failed to start: $*" >&2
        cat "$DIR/log/$name.stdout" >&2
        [ -f "$logf" ] && { echo "---- last lines of $logf:" >&2; tail -n 25 "$logf" >&2; }
        exit 1
    fi
}

# ---------------------------------------------------------------- node size
# Take CPUs/RealMemory from what slurmd detects, so slurmd never registers
# with less than configured (which would DRAIN the node).
read -r CPUS MEM < <(slurmd -C 2>/dev/null | awk '
    /^NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print (v["CPUs"] ? v["CPUs"] : 1), (v["RealMemory"] ? v["RealMemory"] : 1000) }')
[ -n "${CPUS:-}" ] && [ -n "${MEM:-}" ] || die "could not parse 'slurmd -C' output"

# ---------------------------------------------------------------- configs
cat >"$DIR/slurm.conf.new" <<EOF
# generated by start.sh -- one-node localhost cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# munge socket under DIR; cred_expire also sets the delay before a requeued job
# may start again (default 120 s!)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=$DIR/tmp
MailProg=/bin/true
# no cgroups anywhere
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# accounting through slurmdbd (the only way sacct works in 22.05).
# AccountingStoragePass = munge socket used to talk to slurmdbd (AuthInfo's
# socket= is NOT used for that connection).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
# scheduling: fast reaction for tests
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$DIR/slurmdbd.conf.new" <<EOF
# generated by start.sh
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
# 'localhost' => unix socket; the path comes from MYSQL_UNIX_PORT (see below)
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

for f in slurm.conf slurmdbd.conf; do
    if ! cmp -s "$DIR/$f.new" "$DIR/$f"; then
        if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
            log "WARNING: $f changed while slurmctld is running; run stop.sh first to apply it"
        fi
        mv "$DIR/$f.new" "$DIR/$f"
    else
        rm -f "$DIR/$f.new"
    fi
done
chmod 644 "$DIR/slurm.conf"
chmod 600 "$DIR/slurmdbd.conf" # slurmdbd refuses a group/world readable file

check_port_free "$CTLD_PORT" "$DIR/run/slurmctld.pid" slurmctld
check_port_free "$SLURMD_PORT" "$DIR/run/slurmd.pid" slurmd
check_port_free "$DBD_PORT" "$DIR/run/slurmdbd.pid" slurmdbd

# ---------------------------------------------------------------- munge
MUNGE_SOCK="$DIR/munge/munge.socket"
if [ ! -s "$DIR/munge/munge.key" ]; then
    mungekey --create --keyfile="$DIR/munge/munge.key" || die "mungekey failed"
fi
chmod 600 "$DIR/munge/munge.key"
if pid_alive "$DIR/munge/munged.pid" munged; then
    log "munged already running"
else
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    start_checked munged "$DIR/munge/munged.log" \
        munged --force --socket="$MUNGE_SOCK" --key-file="$DIR/munge/munge.key" \
        --log-file="$DIR/munge/munged.log" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed"
fi
WATCH_PIDFILE="$DIR/munge/munged.pid"
wait_for "munged" "$DIR/munge/munged.log" bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"

# ---------------------------------------------------------------- mariadb
# Private throw-away server: no grant tables (=> no mariadb-install-db, no
# passwords), no TCP (unix socket only), small buffers.
MYSQL_SOCK="$DIR/mysql/mysqld.sock"
MYSQLD_OPTS=(--no-defaults --user=root --datadir="$DIR/mysql/data"
    --skip-grant-tables --innodb-buffer-pool-size=128M
    --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M)
if pid_alive "$DIR/mysql/mysqld.pid" mariadbd; then
    log "mariadbd already running"
else
    if [ ! -e "$DIR/mysql/data/ibdata1" ]; then
        # Create the InnoDB files with a clean shutdown first: a server killed
        # (-9) right after creating them on first start cannot recover them.
        mariadbd "${MYSQLD_OPTS[@]}" --bootstrap --log-error="$DIR/mysql/bootstrap.log" \
            </dev/null >"$DIR/log/mariadbd-bootstrap.stdout" 2>&1 ||
            { cat "$DIR/mysql/bootstrap.log" >&2; die "mariadbd --bootstrap failed"; }
    fi
    rm -f "$MYSQL_SOCK"
    mariadbd "${MYSQLD_OPTS[@]}" --socket="$MYSQL_SOCK" --pid-file="$DIR/mysql/mysqld.pid" \
        --log-error="$DIR/mysql/error.log" --skip-networking \
        </dev/null >"$DIR/log/mariadbd.stdout" 2>&1 &
    WATCH_PID=$!
    disown
fi
WATCH_HINT="if InnoDB reports corruption (e.g. after kill -9), delete $DIR/mysql/data to start with an empty accounting DB"
wait_for "mariadbd" "$DIR/mysql/error.log" test -S "$MYSQL_SOCK"

# ---------------------------------------------------------------- slurmdbd
if pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    log "slurmdbd already running"
else
    # slurmdbd finds slurmdbd.conf next to $SLURM_CONF; libmariadb takes the
    # unix socket path from MYSQL_UNIX_PORT.
    start_checked slurmdbd "$DIR/log/slurmdbd.log" env MYSQL_UNIX_PORT="$MYSQL_SOCK" slurmdbd
fi
WATCH_PIDFILE="$DIR/run/slurmdbd.pid"
wait_for "slurmdbd" "$DIR/log/slurmdbd.log" sacctmgr -n list cluster

# ---------------------------------------------------------------- slurmctld
if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    log "slurmctld already running"
else
    start_checked slurmctld "$DIR/log/slurmctld.log" slurmctld
fi
WATCH_PIDFILE="$DIR/run/slurmctld.pid"
wait_for "slurmctld" "$DIR/log/slurmctld.log" scontrol ping

# ---------------------------------------------------------------- slurmd
if pid_alive "$DIR/run/slurmd.pid" slurmd; then
    log "slurmd already running"
else
    start_checked slurmd "$DIR/log/slurmd.log" slurmd
fi
node_idle() {
    local st
    st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
    case "$st" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac
}
WATCH_PIDFILE="$DIR/run/slurmd.pid"
wait_for "node $HOST idle" "$DIR/log/slurmd.log" node_idle
# slurmctld registers the cluster in slurmdbd by itself on first start
wait_for "accounting (cluster '$CLUSTER' in slurmdbd)" "$DIR/log/slurmctld.log" \
    bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx '$CLUSTER'"

echo "export SLURM_CONF=$DIR/slurm.conf" >"$DIR/env.sh"
log "cluster up in $(elapsed); clients need: SLURM_CONF=$DIR/slurm.conf (also in $DIR/env.sh)"
echo "export SLURM_CONF=$DIR/slurm.conf"
