#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, with accounting (sacct), for the slurm tests and trying
# `--executor slurm`: Debian's slurm-wlm, munge, slurmdbd and MariaDB. Run as root on a Debian machine.
# Leaves a running cluster with working accounting alone; otherwise writes /etc/slurm/{slurm,slurmdbd}.conf
# for this host (its name, `nproc` CPUs, 90 % of its memory) and starts whichever of munged, MariaDB,
# slurmdbd, slurmctld and slurmd is not running.
set -euo pipefail

if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && sacct -n -X -S now >/dev/null 2>&1; then
  echo "slurm: a controller with accounting is up ($(sinfo -h -o '%n %c CPUs %t' | head -1))"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  echo "slurm: installing slurm-wlm, slurmdbd, munge and mariadb-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mem_per_cpu=$((mem_mb / cpus))  # a task without --mem takes this per CPU, not the whole node
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ctfm
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$mem_per_cpu
AccountingStorageType=accounting_storage/slurmdbd
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=ctfm
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local n=$1 what=$2
  shift 2
  for _ in $(seq 1 "$((n * 2))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "slurm: $what did not come up"; tail -20 /var/log/slurm/*.log 2>/dev/null || true; exit 1
}

[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || munged --force
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
mysqladmin ping >/dev/null 2>&1 || (mysqld_safe >/var/log/slurm/mysqld.log 2>&1 &)
wait_for 60 MariaDB mysqladmin ping
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'ctfm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
pgrep -x slurmdbd >/dev/null || slurmdbd
wait_for 120 slurmdbd sacctmgr -n list cluster
sacctmgr -n list cluster format=cluster | grep -qw ctfm || sacctmgr -i add cluster ctfm >/dev/null
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
wait_for 60 "the node" bash -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'"
echo "slurm: up ($(sinfo -h -o '%n %c CPUs %m MB %t' | head -1)), accounting by slurmdbd"
