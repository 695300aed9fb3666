"""A real one-node Slurm cluster on loopback for the launch/ tests: munged, slurmctld and slurmd from Debian's
packages, run as this (root) user with every file under one temporary folder. Stopped by their own process ids."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    absent = [d for d in (*DAEMONS, "sbatch", "squeue", "scontrol") if not shutil.which(d)]
    if absent:
        return (f"Slurm is not installed ({', '.join(absent)} missing): apt-get install slurmctld slurmd munge "
                f"slurm-client (.ci/run does)")
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


def proctrack() -> str:
    """proctrack/cgroup, as clusters run it, where cgroup v1's freezer is mounted (this kind of machine); else
    proctrack/linuxproc, which follows parents and misses processes whose parent died."""
    return "proctrack/cgroup" if Path("/sys/fs/cgroup/freezer").is_dir() else "proctrack/linuxproc"


class SlurmCluster:
    def __init__(self, folder: Path, cpus: int = 2):
        self.folder = folder
        self.host = socket.gethostname().split(".")[0]
        self.processes: list[subprocess.Popen] = []
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state").mkdir(exist_ok=True)
        (folder / "spool").mkdir(exist_ok=True)
        self.munge_socket = folder / "munge.socket"
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf = folder / "slurm.conf"
        self.conf.write_text(f"""\
ClusterName=convmixer-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
ProctrackType={proctrack()}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
SchedulerParameters=defer_batch=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        # For proctrack/cgroup: a job's processes are tracked by their cgroup, so a signal or a kill reaches all of
        # them, also those whose parent died. cgroup v1's freezer; nothing is constrained (task/none).
        (folder / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n"
                                            "CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        f = self.folder
        self._spawn(["munged", "--foreground", "--force", f"--key-file={f / 'munge.key'}",
                     f"--socket={self.munge_socket}", f"--pid-file={f / 'munged.pid'}",
                     f"--log-file={f / 'munged.log'}", f"--seed-file={f / 'munged.seed'}"])
        self._wait_for(lambda: self.munge_socket.exists(), "munged")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait_for(lambda: re.search(r"State=(IDLE|MIXED|ALLOCATED)",
                                         self.run(["scontrol", "show", "node", self.host], check=False).stdout),
                       "slurmd")
        return self

    def _spawn(self, command):
        log = open(self.folder / f"{command[0]}.out", "w")
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def _wait_for(self, ready, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.processes):
                break
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} did not start; its logs are in {self.folder}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.folder.glob("*.log")) +
                         sorted(self.folder.glob("*.out")) if p.is_file())

    def run(self, command, check=True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env={**self.env, **kwargs.pop("env", {})}, capture_output=True, text=True,
                                **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} failed: {result.stdout}{result.stderr}")
        return result

    def submit(self, script, *args, cwd, env=None, options=()) -> int:
        """sbatch [options] script [args]; returns the job id."""
        out = self.run(["sbatch", "--parsable", *options, str(script), *map(str, args)], cwd=cwd, env=env or {}).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """scontrol's fields for the job (JobState, Restarts, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", str(job_id)], check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
             timeout=600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout} s\n{self.logs()}")

    def stop(self) -> None:
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged: each by its own pid
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
