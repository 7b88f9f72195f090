"""Bring a real single-node SLURM cluster up and down, for tests and by hand.

The cluster is self-contained: every file it needs (``slurm.conf``, the munge
key and socket, state and spool directories, PID and log files) lives in one
temporary directory, the daemons are started as child processes in the
foreground and are stopped by PID.  Nothing in ``/etc`` or ``/run`` is touched,
so the cluster neither needs nor disturbs a system-wide SLURM installation.

Clients (``sbatch``, ``squeue``, ``scontrol`` …, and therefore Snakemake's
SLURM executor) find the cluster through the ``SLURM_CONF`` environment
variable; :meth:`SlurmCluster.env` returns an environment with it set.

Requirements: Debian/Ubuntu packages ``slurm-wlm`` and ``munge``
(``.ci/slurm-deps.sh`` installs them) and root, because ``slurmd`` must be able
to start job steps as the submitting user.

Usage as a script (prints the ``SLURM_CONF`` to export, Ctrl-C to stop)::

    python -m tests.slurm_cluster            # or: python tests/slurm_cluster.py

Usage from pytest::

    from slurm_cluster import slurm_cluster_fixture
    slurm = slurm_cluster_fixture(scope="module")
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

#: Binaries the cluster needs, with the Debian package providing each.
REQUIRED_BINARIES = {
    "munged": "munge",
    "slurmctld": "slurmctld (slurm-wlm)",
    "slurmd": "slurmd (slurm-wlm)",
    "sbatch": "slurm-client (slurm-wlm)",
    "squeue": "slurm-client (slurm-wlm)",
    "scontrol": "slurm-client (slurm-wlm)",
    "sinfo": "slurm-client (slurm-wlm)",
    "scancel": "slurm-client (slurm-wlm)",
}

INSTALL_HINT = (
    "Install them as root with `bash .ci/slurm-deps.sh` "
    "(= apt-get install -y --no-install-recommends slurm-wlm munge)."
)

# MinJobAge keeps finished jobs visible to `squeue` (there is no accounting
# database, so squeue is the only status source).  Snakemake's SLURM executor
# falls back to sacct unless MinJobAge >= 3 x its initial status-check delay,
# and sacct without slurmdbd cannot answer.  The tests also count every job of a
# run in squeue at its end, and the default config takes well over 10 min: 2 h.
MIN_JOB_AGE_S = 7200


# Where a configless slurmd caches the configuration for client commands on a
# compute node; libslurm looks there after SLURM_CONF and /etc/slurm.  We link
# it to our config directory because Snakemake's job step strips SLURM_CONF
# from the environment of the `srun` it runs inside each job, exactly as it
# would on a production cluster where the config is found by default.
RUN_CONF_LINK = Path("/run/slurm/conf")


class SlurmClusterError(RuntimeError):
    """The single-node cluster could not be brought up (message says why)."""


def missing_binaries() -> list[str]:
    """Return the names of required SLURM/munge binaries not on ``PATH``.

    Returns
    -------
    list of str
        Missing binaries with the package that provides them; empty when all
        are present.
    """
    # slurmctld/slurmd/munged live in /usr/sbin, which is not always on PATH
    # for non-login shells; search it explicitly.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [
        f"{name} (package {pkg})"
        for name, pkg in REQUIRED_BINARIES.items()
        if shutil.which(name, path=path) is None
    ]


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise SlurmClusterError(f"'{name}' not found. {INSTALL_HINT}")
    return found


def _free_port() -> int:
    """Ask the kernel for a currently unused TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detect_node() -> dict[str, str]:
    """Describe this machine as a SLURM node, as ``slurmd -C`` sees it.

    Returns
    -------
    dict
        ``NodeName``, ``CPUs``, ``Boards``, ``SocketsPerBoard``,
        ``CoresPerSocket``, ``ThreadsPerCore`` and ``RealMemory`` (MiB) as
        strings, ready to be written into ``slurm.conf``.
    """
    out = subprocess.run(
        [_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise SlurmClusterError(f"`slurmd -C` failed: {out.stderr.strip()}")
    first = out.stdout.splitlines()[0]
    node = dict(kv.split("=", 1) for kv in first.split() if "=" in kv)
    for key in ("NodeName", "CPUs", "RealMemory"):
        if key not in node:
            raise SlurmClusterError(f"`slurmd -C` printed no {key}: {first!r}")
    return node


class SlurmCluster:
    """A one-node SLURM cluster (munged + slurmctld + slurmd) on localhost.

    Parameters
    ----------
    workdir
        Directory for configuration, state and logs.  A fresh temporary
        directory is created when ``None`` and removed by :meth:`stop` unless
        ``keep=True``.
    keep
        Keep ``workdir`` after :meth:`stop` (for post-mortem of logs).
    memory_fraction
        Fraction of the detected RAM offered to jobs; the rest stays for the
        daemons and for whatever else runs on the machine.
    start_timeout_s
        How long to wait for the node to become schedulable.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        memory_fraction: float = 0.8,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(
            tempfile.mkdtemp(prefix="slurm-cluster-")
        )
        self.keep = keep
        self.memory_fraction = memory_fraction
        self.start_timeout_s = start_timeout_s
        self.procs: dict[str, subprocess.Popen] = {}
        self.node: dict[str, str] = {}
        self.partition = "debug"
        self.startup_seconds = float("nan")
        self.ctld_port = 0

    # -- paths ---------------------------------------------------------------
    @property
    def conf(self) -> Path:
        """Path of the cluster's ``slurm.conf`` (export as ``SLURM_CONF``)."""
        return self.dir / "etc" / "slurm.conf"

    @property
    def slurmctld_log(self) -> Path:
        """Controller log: one ``_slurm_rpc_submit_batch_job`` line per sbatch."""
        return self.dir / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        """Node daemon log."""
        return self.dir / "log" / "slurmd.log"

    @property
    def munge_socket(self) -> Path:
        """Socket of this cluster's private munged."""
        return self.dir / "munge" / "munge.socket"

    # -- lifecycle -------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return an environment in which SLURM clients talk to this cluster.

        Parameters
        ----------
        base
            Environment to extend (default: ``os.environ``).
        """
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        # /usr/sbin is needed by the SLURM executor's `which` probes.
        if "/usr/sbin" not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
        # A leftover SLURM job context would make sbatch inherit job settings.
        for key in list(env):
            if key.startswith("SLURM_") and key != "SLURM_CONF":
                del env[key]
        return env

    def start(self) -> "SlurmCluster":
        """Write the configuration, start the daemons and wait until idle.

        Raises
        ------
        SlurmClusterError
            If binaries are missing, we are not root, or the node does not come
            up within ``start_timeout_s`` (the message includes log tails).
        """
        missing = missing_binaries()
        if missing:
            raise SlurmClusterError(
                "SLURM/munge binaries missing: " + ", ".join(missing)
                + f". {INSTALL_HINT}"
            )
        if os.geteuid() != 0:
            raise SlurmClusterError(
                "A test SLURM cluster must be started as root (slurmd launches "
                "job steps as the submitting user); run the tests as root, as CI does."
            )
        if Path("/etc/slurm/slurm.conf").exists():
            # srun inside a job ignores SLURM_CONF (Snakemake strips it) and
            # would talk to the system cluster instead of ours.
            raise SlurmClusterError(
                "/etc/slurm/slurm.conf exists: this machine already belongs to a "
                "SLURM cluster; run the SLURM tests on that cluster's login node "
                "with SLURM_CONF unset instead, or on a machine without SLURM config."
            )
        t0 = time.monotonic()
        try:
            self._write_config()
            self._publish_config()
            self._start_munged()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)])
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel remaining jobs and stop the daemons by PID (TERM, then KILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Running job steps survive slurmd's exit; cancel them first so no
            # stray workflow job keeps writing after the test finished.
            subprocess.run(
                [_which("scancel"), "--full", "--user", str(os.getuid())],
                env=self.env(), capture_output=True, timeout=30,
            )
            self._wait_no_jobs(timeout_s=15)
        # Stop in reverse order of start: node, controller, authentication.
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self._unpublish_config()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ---------------------------------------------------------------
    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster and return stdout."""
        out = subprocess.run(
            [_which(args[0]), *args[1:]], env=self.env(), capture_output=True,
            text=True, timeout=timeout,
        )
        if out.returncode != 0:
            raise SlurmClusterError(
                f"`{' '.join(args)}` failed ({out.returncode}): {out.stderr.strip()}"
            )
        return out.stdout

    def jobs(self) -> list[dict[str, str]]:
        """All jobs slurmctld still remembers (incl. finished, see MinJobAge).

        Returns
        -------
        list of dict
            ``id``, ``name``, ``state``, ``exit_code`` (``"rc:signal"``) and
            ``comment`` per job, in submission order.
        """
        fmt = "%i|%j|%T|%k"
        lines = self.run("squeue", "--states=all", "--noheader", f"--format={fmt}")
        jobs = []
        for line in lines.splitlines():
            if not line.strip():
                continue
            jid, name, state, comment = line.split("|", 3)
            jobs.append({"id": jid, "name": name, "state": state, "comment": comment})
        jobs.sort(key=lambda j: int(re.sub(r"\D.*", "", j["id"]) or 0))
        return jobs

    def submitted_job_ids(self) -> list[int]:
        """Job ids of every sbatch submission accepted by slurmctld (from its log)."""
        text = self.slurmctld_log.read_text(errors="replace") if self.slurmctld_log.exists() else ""
        return [int(m) for m in re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)]

    def group_caps(self) -> tuple[str, ...]:
        """``--cores``/``--resources`` capping group jobs to this small node.

        The profile's defaults (16 CPUs, 64 GB per group job) suit production
        nodes; a group job larger than the node would be rejected by sbatch.
        """
        mem = int(int(self.node["RealMemory"]) * self.memory_fraction)
        return ("--cores", self.node["CPUs"], "--resources", f"mem_mb={mem}")

    def log_tail(self, n: int = 30) -> str:
        """Last ``n`` lines of every daemon log, for error messages."""
        parts = []
        for log in sorted((self.dir / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {log} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- internals ---------------------------------------------------------------
    def _write_config(self) -> None:
        for sub in ("etc", "log", "state", "spool", "munge", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses keys or socket directories others can read/write.
        os.chmod(self.dir, 0o755)
        os.chmod(self.dir / "munge", 0o711)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)

        self.node = detect_node()
        self.ctld_port = _free_port()
        hostname = self.node["NodeName"]
        mem = int(int(self.node["RealMemory"]) * self.memory_fraction)
        cpus = int(self.node["CPUs"])
        node_line = " ".join(
            f"{k}={self.node[k]}"
            for k in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if k in self.node
        )
        d = self.dir
        conf = f"""\
# Single-node test cluster written by tests/slurm_cluster.py
ClusterName=xfeltest
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
MailProg=/bin/true
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}
SlurmdPidFile={d / 'run' / 'slurmd.pid'}
SlurmctldLogFile={self.slurmctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers/CI: track processes by parent PID, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# Schedule on cores and memory so mem_mb requests are honoured as on a real
# cluster (and oversized requests are rejected at submission).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={hostname} NodeAddr=127.0.0.1 CPUs={cpus} {node_line} RealMemory={mem} State=UNKNOWN
PartitionName={self.partition} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)

    def _publish_config(self) -> None:
        link = RUN_CONF_LINK
        if link.is_symlink() and not link.exists():
            link.unlink()  # stale link of a cluster that was not stopped
        if link.exists() or link.is_symlink():
            raise SlurmClusterError(
                f"{link} exists (another SLURM node or test cluster is running on "
                f"this machine: {os.path.realpath(link)}); stop it first."
            )
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.dir / "etc", target_is_directory=True)
        self._published = True

    def _unpublish_config(self) -> None:
        link = RUN_CONF_LINK
        if getattr(self, "_published", False) and link.is_symlink():
            link.unlink()
        self._published = False

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.stdout", "wb")
        # New session: a Ctrl-C in the terminal (or pytest's signal handling)
        # must not reach the daemons directly; we stop them ourselves by PID.
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
            start_new_session=True,
        )
        log.close()

    def _start_munged(self) -> None:
        m = self.dir / "munge"
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--log-file={self.dir / 'log' / 'munged.log'}",
            f"--seed-file={m / 'munged.seed'}",
        ])
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmClusterError("munged did not start.\n" + self._daemon_output())
            time.sleep(0.05)

    def _daemon_output(self) -> str:
        parts = []
        for out in sorted((self.dir / "log").glob("*.stdout")):
            parts.append(f"--- {out} ---\n{out.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts) + "\n" + self.log_tail()

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmClusterError(
                        f"{name} exited with {proc.returncode} during start-up.\n"
                        + self._daemon_output()
                    )
            out = subprocess.run(
                [_which("sinfo"), "--noheader", "--format=%T"], env=self.env(),
                capture_output=True, text=True, timeout=30,
            )
            state = out.stdout.strip()
            if out.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.2)
        raise SlurmClusterError(
            f"node not idle after {self.start_timeout_s:.0f} s (sinfo: {state!r}).\n"
            + self._daemon_output()
        )

    def _wait_no_jobs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(
                [_which("squeue"), "--noheader", "--format=%i"], env=self.env(),
                capture_output=True, text=True, timeout=30,
            )
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.2)


def slurm_cluster_fixture(scope: str = "module") -> Callable[..., Iterator[SlurmCluster]]:
    """Create a pytest fixture yielding a started :class:`SlurmCluster`.

    The fixture *fails* (never skips) when SLURM is missing, so CI cannot pass
    silently without exercising the cluster.

    Parameters
    ----------
    scope
        pytest fixture scope.
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _fixture() -> Iterator[SlurmCluster]:
        missing = missing_binaries()
        if missing:
            pytest.fail("SLURM/munge binaries missing: " + ", ".join(missing)
                        + f". {INSTALL_HINT}", pytrace=False)
        cluster = SlurmCluster(keep=bool(os.environ.get("XFEL_KEEP_SLURM")))
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()

    return _fixture


def main() -> None:
    """Start a cluster, print how to use it, and stop it on Ctrl-C/SIGTERM."""
    cluster = SlurmCluster(keep=True)
    cluster.start()
    print(f"SLURM cluster up in {cluster.startup_seconds:.1f} s "
          f"(node {cluster.node['NodeName']}, {cluster.node['CPUs']} CPUs).")
    print(f"export SLURM_CONF={cluster.conf}")
    print(f"logs: {cluster.dir / 'log'}   — Ctrl-C to stop")
    stop = False

    def _handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        cluster.stop()
        print("SLURM cluster stopped.")


if __name__ == "__main__":
    main()


# -- helpers shared by the workflow tests (SLURM, resume, rerun) ----------------
REPO = Path(__file__).resolve().parents[1]
SMOKE_SNAKEFILE = REPO / "tests" / "data" / "slurm_smoke" / "Snakefile"
SLURM_PROFILE = REPO / "slurm"
DEFAULT_PROFILE = REPO / "profiles" / "default"

#: Overrides a SLURM cluster without accounting database needs (see
#: slurm/config.yaml): squeue instead of sacct, and a short first status check.
NO_ACCOUNTING_ARGS = (
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
)


def snakemake_cmd(workdir: Path, configfile: Path, *extra: str,
                  snakefile: Path = SMOKE_SNAKEFILE, slurm: bool = False) -> list[str]:
    """Command line running ``snakefile`` in ``workdir`` with the repo profiles.

    The workflow profile ``profiles/default`` is given explicitly because the
    run directory is not the repo root; ``slurm=True`` adds ``--profile slurm``
    plus :data:`NO_ACCOUNTING_ARGS`, exactly what a user of an accounting-less
    cluster types.
    """
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
           "--directory", str(workdir), "--configfile", str(configfile),
           "--workflow-profile", str(DEFAULT_PROFILE)]
    if slurm:
        cmd += ["--profile", str(SLURM_PROFILE), *NO_ACCOUNTING_ARGS]
    else:
        cmd += ["--cores", "2"]  # as run.sh does for local runs
    return cmd + list(extra)


def output_digest(workdir: Path, subdirs: tuple[str, ...] = ("raw", "proc", "results")
                  ) -> dict[str, str]:
    """SHA-256 of every output file's *content*, keyed by relative path.

    ``.npz`` archives are hashed array by array, because the zip container
    stores a write timestamp that differs between otherwise identical runs.
    """
    import hashlib

    import numpy as np

    digest: dict[str, str] = {}
    for sub in subdirs:
        for path in sorted((workdir / sub).rglob("*")):
            if not path.is_file():
                continue
            h = hashlib.sha256()
            if path.suffix == ".npz":
                with np.load(path) as z:
                    for key in sorted(z.files):
                        h.update(key.encode())
                        h.update(np.ascontiguousarray(z[key]).tobytes())
            else:
                h.update(path.read_bytes())
            digest[str(path.relative_to(workdir))] = h.hexdigest()
    return digest


#: HDF5 datasets that record *when* a file was written, not what it holds:
#: EuXFEL METADATA dates and the simulator's wall-clock train timestamps.
WALL_CLOCK_DATASETS = re.compile(r"(^|/)(timestamp|creationDate|updateDate)$")


def h5_content_digest(path: Path) -> str:
    """SHA-256 over every dataset and attribute of an HDF5 file.

    Provenance (creation time, host, input sizes) and wall-clock stamps
    (:data:`WALL_CLOCK_DATASETS`) legitimately differ between two runs of the
    same workflow and are skipped; every other byte must be identical.
    """
    import hashlib

    import h5py
    import numpy as np

    h = hashlib.sha256()

    def _value_bytes(value: object) -> bytes:
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            # Variable-length strings: hash the text, not the object pointers.
            return repr([v.decode() if isinstance(v, bytes) else v
                         for v in arr.ravel().tolist()]).encode()
        if arr.dtype.kind in "fc":
            # NaN has many bit patterns (sign, payload) and which one a computation
            # leaves depends on the code path (e.g. numba's thread count); it is one value
            arr = np.where(np.isnan(arr), np.nan, arr)
        return np.ascontiguousarray(arr).tobytes()

    def _attrs(obj: "h5py.HLObject") -> None:
        for key in sorted(obj.attrs):
            if "provenance" in key.lower():
                continue
            h.update(key.encode())
            h.update(_value_bytes(obj.attrs[key]))

    def _visit(name: str, obj: "h5py.HLObject") -> None:
        if "provenance" in name.lower() or WALL_CLOCK_DATASETS.search(name):
            return
        h.update(name.encode())
        _attrs(obj)
        if isinstance(obj, h5py.Dataset):
            h.update(str(obj.dtype).encode())
            h.update(_value_bytes(obj[()]))

    with h5py.File(path, "r") as f:
        _attrs(f)
        f.visititems(_visit)
    return h.hexdigest()


#: summary.json entries measured from the run itself (benchmarks, provenance).
RUN_SPECIFIC_JSON_KEYS = ("provenance", "timings", "total_job_seconds",
                          "peak_job_memory_mb")


def results_digest(root: Path, skip_json_keys: tuple[str, ...] = RUN_SPECIFIC_JSON_KEYS
                   ) -> dict[str, str]:
    """Content digest of a results/proposal tree.

    HDF5 by content (:func:`h5_content_digest`), JSON minus run-specific keys,
    everything else byte-wise.  Skipped: benchmark records (timings), logs and
    rendered HTML reports (they embed dates and paths; the data they show are
    compared through the files they were rendered from).
    """
    import hashlib
    import json

    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if (not path.is_file() or "benchmarks" in rel.split("/")
                or path.suffix in (".log", ".html")):
            continue
        if path.suffix in (".h5", ".cxi"):  # CXI is HDF5: by content, not by bytes
            out[rel] = h5_content_digest(path)
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in skip_json_keys}
            out[rel] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        else:
            # text products (CrystFEL .lst) name files by absolute path: the run's
            # own directory is replaced, so two runs in two places compare equal
            data = path.read_bytes().replace(str(root.parent).encode(), b"<run>")
            out[rel] = hashlib.sha256(data).hexdigest()
    return out
