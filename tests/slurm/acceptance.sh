#!/usr/bin/env bash
# SLURM acceptance run (`make slurm-acceptance`, not part of `make test`): starts a real one-node
# SLURM cluster on this machine for the run only, runs the demo pipeline through profiles/slurm
# filled in as a user would, and reports wall time, job counts and the partitions the train jobs
# went to (stdout and benchmarks/results/slurm_acceptance.md). Debian, as root; installs
# slurm-wlm and munge with apt-get when they are missing. Run files stay in /tmp/slurm-acceptance.*
#
#   SLURM_ACCEPTANCE_POLL_S     seconds between the plugin's job-status polls (default 10; the
#                               plugin's own 40 s would dominate the wall time of the tiny jobs)
#   SLURM_ACCEPTANCE_TIMEOUT_S  snakemake is interrupted (its jobs cancelled) after this (3600)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/tests/slurm
REPORT=$REPO/benchmarks/results/slurm_acceptance.md
ETC_CONF=/etc/slurm/slurm.conf
POLICY=/usr/sbin/policy-rc.d
POLL_S=${SLURM_ACCEPTANCE_POLL_S:-10}
TIMEOUT_S=${SLURM_ACCEPTANCE_TIMEOUT_S:-3600}
# As the Makefile sets them, so a direct `bash tests/slurm/acceptance.sh` behaves the same; the
# jobs inherit this environment (sbatch --export=ALL).
export PATH=$REPO/.venv/bin:$PATH HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 DVC_NO_ANALYTICS=1

say() { printf '[slurm-acceptance] %s\n' "$*"; }
die() {
	say "FAILED: $*" >&2
	exit 1
}

[[ $EUID -eq 0 ]] || die "run as root: it installs packages, starts SLURM daemons and writes $ETC_CONF"
cd "$REPO"

STATE=$(mktemp -d /tmp/slurm-acceptance.XXXXXX)
chmod 755 "$STATE" # munged wants every directory above its socket searchable by all
PIDS=()            # the daemons this run started, in start order
ADDED_POLICY="" CONF_BACKUP="" LINKED_CONF="" MADE_ETC_DIR=""

# Whatever happens (failure, Ctrl-C, kill): cancel the run's jobs, stop only the daemons started
# here, and put back what was written outside $STATE.
cleanup() {
	local rc=$? pid _
	set +e
	trap - EXIT INT TERM
	if [[ -n ${PREEMPTER:-} ]]; then kill "$PREEMPTER" 2>/dev/null; fi
	if ((${#PIDS[@]})); then
		say "stopping SLURM daemons"
		if [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; then
			timeout 10 scancel --quiet --user "$(id -un)"
			for _ in {1..20}; do
				[[ -z $(timeout 10 squeue -h -o %i 2>/dev/null) ]] && break
				sleep 1
			done
		fi
		for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
			pid=${PIDS[i]}
			kill "$pid" 2>/dev/null
			for _ in {1..50}; do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.2
			done
			kill -9 "$pid" 2>/dev/null
		done
		wait 2>/dev/null
	fi
	if [[ -n $LINKED_CONF ]]; then rm -f "$ETC_CONF"; fi
	if [[ -n $CONF_BACKUP ]]; then mv "$CONF_BACKUP" "$ETC_CONF" && say "restored the original $ETC_CONF"; fi
	if [[ -n $MADE_ETC_DIR ]]; then rmdir "$(dirname "$ETC_CONF")"; fi
	if [[ -n $ADDED_POLICY ]]; then rm -f "$POLICY"; fi
	say "run files (logs, results) kept in $STATE"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. packages ---------------------------------------------------------------------------------
missing=()
for cmd in munged slurmctld slurmd sbatch squeue sinfo; do
	command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if ((${#missing[@]})); then
	say "installing slurm-wlm and munge with apt-get (missing: ${missing[*]})"
	# Keep apt from starting the packages' own services: they have no config, the run starts its own.
	if [[ ! -e $POLICY ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY"
		ADDED_POLICY=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
		>"$STATE/apt-install.log" 2>&1; then
		tail -n 20 "$STATE/apt-install.log"
		die "apt-get could not install slurm-wlm and munge (log: $STATE/apt-install.log)"
	fi
else
	say "slurm-wlm and munge already installed ($(slurmctld -V), $(munged -V | cut -d' ' -f1))"
fi

# --- 2. the cluster ------------------------------------------------------------------------------
say "starting munged, slurmctld and slurmd (state in $STATE)"
HOST=$(hostname -s)
CPUS=$(nproc)
# A bit below the real memory, as slurmd refuses a node that has less than its RealMemory.
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
mkdir -p "$STATE"/{munge,munge-run,slurmctld,slurmd,log}
chmod 700 "$STATE/munge"
head -c 1024 /dev/urandom >"$STATE/munge/munge.key" # a fresh key: nothing outside this run trusts it
chmod 400 "$STATE/munge/munge.key"
sed -e "s#@HOST@#$HOST#g" -e "s#@STATE@#$STATE#g" -e "s#@CPUS@#$CPUS#g" -e "s#@MEM_MB@#$MEM_MB#g" \
	"$HERE/slurm.conf.in" >"$STATE/slurm.conf"

# The config has to be at the default path: SLURM_CONF would not do, because the plugin's
# in-job `srun` (snakemake-executor-plugin-slurm-jobstep) drops every SLURM_* variable but a few.
if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == /tmp/slurm-acceptance.*/slurm.conf ]]; then
	rm -f "$ETC_CONF" # left by a run that was killed with no chance to clean up
elif [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
	CONF_BACKUP=$STATE/slurm.conf.orig
	mv "$ETC_CONF" "$CONF_BACKUP"
	say "moved the existing $ETC_CONF aside for the run (restored on exit)"
fi
if [[ ! -d $(dirname "$ETC_CONF") ]]; then
	mkdir -p "$(dirname "$ETC_CONF")"
	MADE_ETC_DIR=1
fi
ln -s "$STATE/slurm.conf" "$ETC_CONF"
LINKED_CONF=1

# Each daemon in the foreground of its own session: its PID is known, and a Ctrl-C reaches
# snakemake (which then cancels its jobs) but not the cluster.
start() {
	local name=$1
	shift
	setsid "$@" >"$STATE/log/$name.out" 2>&1 &
	PIDS+=($!)
}
wait_for() { # seconds, description, command...: poll once a second
	local secs=$1 what=$2 _
	shift 2
	for ((_ = 0; _ < secs; _++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 1
	done
	tail -n 20 "$STATE"/log/*
	die "$what not up after ${secs}s (logs above, in $STATE/log)"
}
SOCKET=$STATE/munge-run/munge.socket.2
start munged munged -F --key-file="$STATE/munge/munge.key" --socket="$SOCKET" \
	--pid-file="$STATE/munge-run/munged.pid" --seed-file="$STATE/munge/munged.seed" \
	--log-file="$STATE/log/munged.log"
wait_for 20 munged munge -n -S "$SOCKET"
start slurmctld slurmctld -D
start slurmd slurmd -D
node_idle() { [[ $(sinfo -h -n "$HOST" -o %T | sort -u) == idle ]]; }
wait_for 60 "node $HOST (idle in sinfo)" node_idle
say "cluster up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"

# --- 3. the demo through the SLURM profile -------------------------------------------------------
# The profile as a user fills it in. Any account name does: without slurmdbd there is no
# accounting, and the plugin's --slurm-no-account is not read by its 2.8.0 release.
PROFILE=$STATE/profile
cp -r profiles/slurm "$PROFILE"
sed -i -e 's#<account>#acceptance#g' -e "s#profiles/slurm/partitions.yaml#$PROFILE/partitions.yaml#" \
	"$PROFILE/config.yaml"
sed -i -e 's#<cpu-partition>#cpu#g' -e 's#<gpu-partition>#gpu#g' "$PROFILE/config.yaml" "$PROFILE/partitions.yaml"
# Both partitions are this node. The gpu one keeps its max_gpu, so a CPU-only job has to lose it
# by the plugin's GPU-partition penalty, not by a tie.
sed -i -E -e "s#(max_threads:) [0-9]+#\1 $CPUS#" -e "s#(max_mem_mb:) [0-9]+#\1 $MEM_MB#" "$PROFILE/partitions.yaml"
if grep -vhE '^\s*#' "$PROFILE"/*.yaml | grep -E '<[a-z-]+>'; then die "placeholders left in $PROFILE"; fi

# The demo needs about 3 GB a job, not the memory the profile asks of real GPU nodes. On the
# command line --set-resources replaces the profile's whole set-resources (its runtimes too), so
# the profile's entries go along again, only mem_mb changed.
mapfile -t SET_RESOURCES < <(python - "$PROFILE/config.yaml" <<'PY'
import sys, yaml
for rule, res in yaml.safe_load(open(sys.argv[1]))["set-resources"].items():
    for key, value in {**res, "mem_mb": 3000}.items():
        print(f"{rule}:{key}={value}")
PY
)
((${#SET_RESOURCES[@]})) || die "no set-resources read from $PROFILE/config.yaml"

RESULTS=$STATE/results
LOG=$STATE/snakemake.log
# Fresh data and results dirs: the run really generates, trains and predicts, and shares no files
# with `make demo`. Status by squeue: sacct needs slurmdbd. --verbose makes the plugin log its
# sbatch calls.
CMD=(snakemake --workflow-profile "$PROFILE" --slurm-partition-config "$PROFILE/partitions.yaml"
	--configfile config/demo.yaml --config "results_dir=$RESULTS" "data_dir=$STATE/data"
	--set-resources "${SET_RESOURCES[@]}"
	--slurm-status-command squeue --slurm-init-seconds-before-status-checks "$POLL_S"
	--slurm-logdir "$STATE/slurm_logs" --slurm-keep-successful-logs --verbose)
# Preemption, as SLURM does it: once a fold job has committed an epoch, `scontrol requeue` stops
# it and puts it back into the queue (the profile submits with --requeue). Its second start must
# resume from that epoch (the trainer's --resume), which its log then says.
REQUEUED=$STATE/requeued
preempt_one_fold_job() {
	local id comment wc model fold
	while sleep 1; do
		while read -r id comment; do
			wc=${comment#rule_train_wildcards_} # <model>_<fold>
			model=${wc%_*} fold=${wc##*_}
			if [[ -s $RESULTS/models/$model/fold$fold/last_state.pt && ! -e $RESULTS/models/$model/fold$fold/metrics.json ]]; then
				if scontrol requeue "$id"; then
					echo "$id $model $fold" >"$REQUEUED"
					return 0
				fi
			fi
		done < <(squeue -h --states=RUNNING -o '%i %k' | awk '$2 ~ /^rule_train_wildcards_/')
	done
}
preempt_one_fold_job &
PREEMPTER=$!

say "running snakemake through the SLURM profile (full log: $LOG)"
T0=$EPOCHREALTIME
set +e
# tee and grep ignore Ctrl-C so snakemake can still write while it cancels its jobs; a timeout
# interrupts snakemake the same way.
timeout --foreground --signal=INT --kill-after=120 "$TIMEOUT_S" "${CMD[@]}" 2>&1 | tee -i "$LOG" |
	(trap '' INT && exec grep --line-buffered -E 'steps \([0-9]+%\) done|submitted with SLURM jobid|^Error in rule')
RC=${PIPESTATUS[0]}
kill "$PREEMPTER" 2>/dev/null
set -e
WALL=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')

# --- 4. what happened ----------------------------------------------------------------------------
RUN_ID=$(grep -m1 -oP 'SLURM run ID: \K\S+' "$LOG" || true)
STEPS=$(grep -oE '[0-9]+ of [0-9]+ steps \([0-9]+%\) done' "$LOG" | tail -n 1 || true)
SUBMITTED=$(grep -c 'has been submitted with SLURM jobid' "$LOG" || true)
TRAIN_SBATCH=$(grep -m1 -oP 'sbatch call: \Ksbatch .*--comment rule_train_.*' "$LOG" || true)
# SLURM's own record of the run's jobs (MinJobAge keeps finished ones in squeue): comment|partition|state
JOBS=""
if [[ -n $RUN_ID ]]; then JOBS=$(squeue -h --states=all --name "$RUN_ID" -o '%k|%P|%T' || true); fi
TRAIN_PARTS=$(awk -F'|' '$1 ~ /^rule_train_/ {print $2}' <<<"$JOBS" | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s=", "}')
TRAIN_NOT_CPU=$(awk -F'|' '$1 ~ /^rule_train_/ && $2 != "cpu"' <<<"$JOBS" | wc -l)
BY_RULE=$(awk -F'|' 'NF == 3 {sub(/^rule_/, "", $1); sub(/_wildcards_.*/, "", $1); n[$1 " " $3]++}
	END {for (k in n) print k, n[k]}' <<<"$JOBS" | sort | awk '{printf "%s%s %s x%s", s, $1, $2, $3; s=", "}')

PREEMPTED="none"
if [[ -s $REQUEUED ]]; then
	read -r PRE_ID PRE_MODEL PRE_FOLD <"$REQUEUED"
	PRE_LOG=$RESULTS/logs/train/${PRE_MODEL}_fold${PRE_FOLD}.log
	RESUMED=$(grep -m1 -oE "fold $PRE_FOLD: resuming after epoch [0-9]+" "$PRE_LOG" || true)
	PREEMPTED="job $PRE_ID ($PRE_MODEL fold $PRE_FOLD) requeued by scontrol; on its second start: ${RESUMED:-no resume in $PRE_LOG}"
fi

PROBLEMS=()
[[ -s $REQUEUED ]] || PROBLEMS+=("no running fold job was requeued")
[[ $PREEMPTED == *"resuming after epoch"* ]] || PROBLEMS+=("the requeued fold job did not resume (${PREEMPTED})")
((RC != 124)) || PROBLEMS+=("snakemake timed out after ${TIMEOUT_S}s")
((RC == 0 || RC == 124)) || PROBLEMS+=("snakemake exited with $RC")
[[ $STEPS =~ ^([0-9]+)\ of\ ([0-9]+)\ steps\ \(100%\) && ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] ||
	PROBLEMS+=("not all steps done (${STEPS:-no step finished})")
[[ -n $TRAIN_PARTS ]] || PROBLEMS+=("no train job in squeue")
((TRAIN_NOT_CPU == 0)) || PROBLEMS+=("$TRAIN_NOT_CPU train job(s) not in partition cpu")
RESULT=PASS
if ((${#PROBLEMS[@]})); then RESULT="FAIL: $(printf '%s; ' "${PROBLEMS[@]}" | sed 's/; $//')"; fi

mkdir -p "$(dirname "$REPORT")"
{
	echo "# SLURM acceptance run (tests/slurm/acceptance.sh)"
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| date | $(date -Iseconds) |"
	echo "| result | $RESULT |"
	echo "| cluster | one node \`$HOST\`: $CPUS CPUs, RealMemory $MEM_MB MB, no GPU; partitions cpu (default), gpu; $(slurmctld -V) |"
	echo "| snakemake wall time | ${WALL} s (status polled by squeue every ${POLL_S} s) |"
	echo "| steps (snakemake log) | ${STEPS:-none} |"
	echo "| sbatch submissions | $SUBMITTED |"
	echo "| SLURM jobs by rule and state (squeue) | ${BY_RULE:-none} |"
	echo "| train jobs by partition (squeue) | ${TRAIN_PARTS:-none} |"
	echo "| preemption (requeue) of a running fold job | $PREEMPTED |"
	echo "| snakemake log | \`$LOG\` |"
	echo "| SLURM job logs | \`$STATE/slurm_logs\` |"
	echo
	echo "Command (from the repository root):"
	echo
	echo '```'
	printf '%q ' "${CMD[@]}" | sed 's/ $//'
	echo
	echo '```'
	echo
	echo "sbatch line of one train job, as the plugin ran it:"
	echo
	echo '```'
	echo "${TRAIN_SBATCH:-none found}"
	echo '```'
} >"$REPORT"
cat "$REPORT"
say "report: $REPORT"

if [[ $RESULT != PASS ]]; then
	# The failing jobs' logs (rule log and SLURM log), as snakemake names them in its errors.
	awk '/^Error in rule/ {on=1} on && /^(Error in rule|[[:space:]]+(message|log):)/ {print} /^$/ {on=0}' "$LOG" >&2
	if ! grep -q '^Error in rule' "$LOG"; then tail -n 30 "$LOG" >&2; fi
	die "${RESULT#FAIL: } (snakemake log: $LOG)"
fi
say "PASS"
