"""`python -m bench sweep matrix.yaml --executor local|docker|slurm --out DIR`.

Every cell (framework x variant x GPU type x task x precision x repeat) runs one
`python -m bench run` and leaves DIR/<cell id>.json. Resume by default; failures are
isolated; an ok result is never replaced by a worse one.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import envinfo, frameworks, matrix as matrix_mod, results, runner, tasks

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 40


# ---------------------------------------------------------------- records

def existing(out: Path, cell) -> dict | None:
    path = out / f"{cell.id}.json"
    if not path.exists():
        return None
    try:
        return results.load_result(path)
    except results.ResultSchemaError:
        return None  # a damaged file counts as not done; it is replaced


def cell_info(cell, executor: str, **extra) -> dict:
    info = {"id": cell.id, "variant": cell.variant, "gpu_type": cell.gpu, "repeat": cell.repeat,
            "executor": executor}
    info.update({k: v for k, v in extra.items() if v is not None})
    return info


def failure_record(cell, executor: str, status: str, error: str, log_tail: str | None, **extra) -> dict:
    spec = tasks.sized(cell.task, cell.device, cell.quick)
    rec = runner.base_record(cell.framework, cell.task, cell.device, cell.precision, cell.quick, spec,
                             envinfo.capture())
    rec.update(status=status, error=error, log_tail=log_tail, cell=cell_info(cell, executor, **extra))
    return rec


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def store(out: Path, cell, record: dict) -> str:
    """Write the cell's record; an ok result already there is never replaced by a worse one."""
    old = existing(out, cell)
    if old is not None and old["status"] == "ok" and record["status"] != "ok":
        attempts = out / "attempts"
        results.write_result(record, attempts, f"{cell.id}-{record['started_at'].replace(':', '')}.json")
        return "kept the earlier ok result; this attempt is under attempts/"
    results.write_result(record, out, f"{cell.id}.json")
    return record["status"]


def collect(cell, executor: str, cell_out: Path, returncode: int | None, log_text: str,
            error: str | None = None, **extra) -> dict:
    """The result a cell's run left in cell_out, or a failed record saying why there is none."""
    found = sorted(cell_out.glob("*.json")) if cell_out.exists() else []
    if error is None and found:
        try:
            record = results.load_result(found[0])
        except results.ResultSchemaError as exc:
            error = f"the run wrote an invalid result: {exc}"
        else:
            record["cell"] = cell_info(cell, executor, **extra)
            if record["status"] != "ok" and not record.get("log_tail"):
                record["log_tail"] = tail(log_text)
            return record
    if error is None:
        error = f"the run exited with code {returncode} and wrote no result"
    status = "oom" if "out of memory" in log_text.lower() or returncode == -signal.SIGKILL else "failed"
    return failure_record(cell, executor, status, error, tail(log_text), **extra)


def run_args(cell, data: str, out_dir: str) -> list[str]:
    args = ["run", "--framework", cell.framework, "--tasks", cell.task, "--device", cell.device,
            "--precision", cell.precision, "--data", data, "--seed", str(cell.repeat), "--out", out_dir]
    return args + (["--quick"] if cell.quick else [])


# ---------------------------------------------------------------- executors

class LocalExecutor:
    """Each cell in the framework's virtual environment (`bench setup`), one after another."""

    name = "local"

    def __init__(self, m, args):
        self.python = m.executor("local").get("python") or sys.executable
        self.data, self.timeout = args.data or m.doc.get("data", "auto"), args.timeout or m.doc.get("timeout_s")

    def run(self, cell, out: Path, logs: Path) -> dict:
        fw = frameworks.get(cell.framework)
        if not fw.runs_here:
            return failure_record(cell, self.name, "skipped", f"{fw.name}: {fw.note}", None)
        with tempfile.TemporaryDirectory(prefix=f".{cell.id}.", dir=out) as tmp:
            cmd = [self.python, "-m", "bench", *run_args(cell, self.data, tmp)]
            log_path = logs / f"{cell.id}.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                error = None
                try:
                    returncode = proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    returncode = proc.wait()
                    error = f"timed out after {self.timeout} s (executors timeout_s / --timeout)"
                except KeyboardInterrupt:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
            return collect(cell, self.name, Path(tmp), returncode, log_path.read_text(), error)


def wait_for_exit(container, timeout: float | None, poll_s: float = 1.0) -> int:
    """The container's exit code, polled once a second. Not the engine's wait call: podman
    4.3's API service (Debian 12) spins a whole core while it waits (podman issue 18150),
    which on a small machine slowed the timed run inside the container several times over."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return int(container.attrs["State"]["ExitCode"])
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"still running after {timeout:.0f} s (timeout_s)")
        time.sleep(poll_s)


class DockerExecutor:
    """Each cell in its image bench-<framework>:<variant> through the Docker Engine API
    (the `docker` SDK; podman's compatible socket works too: DOCKER_HOST=unix://...)."""

    name = "docker"

    def __init__(self, m, args, client=None):
        conf = m.executor("docker")
        self.prefix = conf.get("image_prefix", "bench-")
        self.data_volume = conf.get("data_volume", "bench-data")
        self.base_url = conf.get("base_url")
        self.data, self.timeout = args.data or m.doc.get("data", "auto"), args.timeout or m.doc.get("timeout_s")
        self.gpus = m.gpus
        self._client = client

    @property
    def client(self):
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        return self._client

    def image(self, cell) -> str:
        return f"{self.prefix}{cell.framework}:{cell.variant}"

    def run_kwargs(self, cell, results_dir: Path) -> dict:
        """The containers.run arguments of one cell (unit-tested without an engine)."""
        import docker

        kwargs = {
            "image": self.image(cell),
            "command": run_args(cell, self.data, "/results")[1:],  # the entrypoint is `bench run`
            "volumes": {self.data_volume: {"bind": "/data", "mode": "rw"},
                        str(results_dir): {"bind": "/results", "mode": "rw"}},
            "environment": {"BENCH_NO_VENV": "1", "BENCH_DATA_DIR": "/data"},
            "detach": True,
            "labels": {"bench.cell": cell.id},
        }
        if cell.device == "gpu":
            ids = self.gpus[cell.gpu].get("docker_device_ids")
            kwargs["device_requests"] = [docker.types.DeviceRequest(
                device_ids=[str(i) for i in ids], capabilities=[["gpu"]]) if ids else
                docker.types.DeviceRequest(count=1, capabilities=[["gpu"]])]
        return kwargs

    def run(self, cell, out: Path, logs: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix=f".{cell.id}.", dir=out) as tmp:
            os.chmod(tmp, 0o777)  # the image runs as a non-root user
            error, returncode, log_text = None, None, ""
            try:
                container = self.client.containers.run(**self.run_kwargs(cell, Path(tmp)))
            except Exception as exc:  # no image, no engine, no GPU runtime
                return failure_record(cell, self.name, "failed", f"container did not start: {exc}", None)
            try:
                returncode = wait_for_exit(container, self.timeout)
            except Exception as exc:
                error = f"container did not finish: {exc}"
                container.kill()
            finally:
                log_text = container.logs().decode(errors="replace")
                (logs / f"{cell.id}.log").write_text(log_text)
                container.remove(force=True)
            return collect(cell, self.name, Path(tmp), returncode, log_text, error, image=self.image(cell))


class SlurmExecutor:
    """One sbatch job per cell, GPU type mapped to GRES or a constraint; polled to the end."""

    name = "slurm"

    def __init__(self, m, args):
        conf = m.executor("slurm")
        self.conf, self.gpus = conf, m.gpus
        self.runner = conf.get("runner", "venv")
        self.poll_s = float(conf.get("poll_s", 10))
        self.data = args.data or m.doc.get("data", "auto")
        self.python = conf.get("python") or sys.executable
        self.prefix = conf.get("image_prefix", "bench-")
        if not shutil.which("sbatch"):
            raise matrix_mod.MatrixError("--executor slurm needs sbatch on PATH (a Slurm client); "
                                         "scripts/slurm-cluster starts a one-node cluster for tests")

    def script(self, cell, cell_out: Path, log_path: Path) -> str:
        gpu = self.gpus[cell.gpu]
        lines = ["#!/bin/bash", f"#SBATCH --job-name=bench-{cell.id}", f"#SBATCH --output={log_path}",
                 "#SBATCH --ntasks=1"]
        if gpu.get("gres"):
            lines.append(f"#SBATCH --gres={gpu['gres']}")
        if gpu.get("constraint"):
            lines.append(f"#SBATCH --constraint={gpu['constraint']}")
        for key in ("partition", "time"):
            if self.conf.get(key):
                lines.append(f"#SBATCH --{key}={self.conf[key]}")
        lines += [f"#SBATCH {a}" for a in self.conf.get("extra_args", [])]
        image = f"{self.prefix}{cell.framework}:{cell.variant}"
        inside = " ".join(run_args(cell, self.data, "/results"))  # the command inside a container
        if self.runner == "venv":
            body = f"cd {REPO_ROOT}\nexec {self.python} -m bench {' '.join(run_args(cell, self.data, str(cell_out)))}"
        elif self.runner == "podman":  # the image's entrypoint is `python3 -m bench run`
            dev = "--device nvidia.com/gpu=all " if cell.device == "gpu" else ""
            body = (f"exec podman run --rm {dev}-v {cell_out}:/results -v bench-data:/data "
                    f"{image} {inside.split(' ', 1)[1]}")
        elif self.runner == "apptainer":
            nv = "--nv " if cell.device == "gpu" else ""
            body = (f"exec apptainer exec {nv}--bind {cell_out}:/results docker-daemon://{image} "
                    f"python3 -m bench {inside}")
        else:  # pyxis/enroot
            body = (f"exec srun --container-image={image} --container-mounts={cell_out}:/results "
                    f"python3 -m bench {inside}")
        return "\n".join(lines) + "\n" + body + "\n"

    def run_all(self, cells, out: Path, logs: Path, report) -> None:
        jobs = {}
        work = out / ".slurm"
        work.mkdir(exist_ok=True)
        for cell in cells:
            cell_out = work / cell.id
            shutil.rmtree(cell_out, ignore_errors=True)
            cell_out.mkdir(parents=True)
            script = work / f"{cell.id}.sh"
            script.write_text(self.script(cell, cell_out, logs / f"{cell.id}.log"))
            proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
            if proc.returncode != 0:
                report(cell, failure_record(cell, self.name, "failed",
                                            f"sbatch refused the job: {proc.stderr.strip()}", None))
                continue
            jobs[proc.stdout.strip().split(";")[0]] = cell
            print(f"[slurm] submitted {cell.id} as job {list(jobs)[-1]}", flush=True)
        pending = dict(jobs)
        while pending:
            time.sleep(self.poll_s)
            queued = self._queued(list(pending))
            for job_id in [j for j in pending if j not in queued]:
                cell = pending.pop(job_id)
                info = self._job_info(job_id)
                log_path = logs / f"{cell.id}.log"
                log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
                state = info.get("JobState", "UNKNOWN")
                error = None if state == "COMPLETED" or list((work / cell.id).glob("*.json")) else \
                    f"Slurm job {job_id} ended {state} ({info.get('Reason', '')})"
                report(cell, collect(cell, self.name, work / cell.id, None, log_text, error,
                                     slurm_job_id=job_id, slurm_state=state,
                                     slurm_tres=info.get("AllocTRES") or info.get("TRES"),
                                     slurm_gres=info.get("TresPerNode") or info.get("Gres")))
            if pending:
                states = sorted(set(queued.values()))
                print(f"[slurm] {len(pending)} job(s) in the queue: {', '.join(states)}", flush=True)

    @staticmethod
    def _queued(job_ids) -> dict:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"],
                              capture_output=True, text=True)
        out = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.partition(" ")
            if state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
                out[job] = state
        return out

    @staticmethod
    def _job_info(job_id: str) -> dict:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        info = {}
        for field in proc.stdout.split():
            key, _, value = field.partition("=")
            info.setdefault(key, value)
        return info


# ---------------------------------------------------------------- the sweep

def plan(cells, out: Path, args):
    todo, done = [], []
    for cell in cells:
        old = existing(out, cell)
        if args.force or old is None or (args.rerun_failed and old["status"] != "ok"):
            todo.append(cell)
        else:
            done.append((cell, old["status"]))
    return todo, done


def cmd_sweep(args) -> int:
    try:
        m = matrix_mod.load(args.matrix)
        cells = m.cells(args.executor, args.frameworks, args.variants, args.gpus, args.tasks,
                        True if args.quick else None)
        executor = {"local": LocalExecutor, "docker": DockerExecutor, "slurm": SlurmExecutor}[args.executor](m, args)
    except matrix_mod.MatrixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out
    todo, done = plan(cells, out, args)
    print(f"sweep {args.matrix} on {args.executor}: {len(cells)} cells, {len(done)} already done "
          f"(resume), {len(todo)} to run -> {out}")
    for cell, status in done:
        print(f"  skip {cell.id} ({status} result present)")
    for cell in todo:
        print(f"  run  {cell.id}")
    if args.dry_run or not todo:
        return 0
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start, outcome = time.monotonic(), {}

    def report(cell, record):
        outcome[cell.id] = (store(out, cell, record), record)
        ok = sum(1 for s, _ in outcome.values() if s == "ok")
        print(f"[{len(outcome)}/{len(todo)}] {cell.id}: {outcome[cell.id][0]} | ok {ok}, not ok "
              f"{len(outcome) - ok}, left {len(todo) - len(outcome)}, elapsed "
              f"{time.monotonic() - start:.0f} s", flush=True)

    try:
        if isinstance(executor, SlurmExecutor):
            executor.run_all(todo, out, logs, report)
        else:
            for cell in todo:
                report(cell, executor.run(cell, out, logs))
    except KeyboardInterrupt:
        running = next((c for c in todo if c.id not in outcome), None)
        if running is not None:
            store(out, running, failure_record(running, args.executor, "failed",
                                               "interrupted (Ctrl-C): run the sweep again to resume", None))
        print(f"\ninterrupted: {len(outcome)} cells finished and kept; the next run resumes",
              file=sys.stderr)
        return 130
    print()
    print(summary(outcome))
    return 1 if any(s in ("failed", "oom") for s, _ in outcome.values()) else 0


def summary(outcome: dict) -> str:
    rows = [("cell", "status", "time s")]
    for cell_id, (status, record) in outcome.items():
        t = record.get("time_total_s")
        rows.append((cell_id, status, "-" if t is None else f"{t:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run every cell of matrix.yaml; resumes, isolates failures")
    p.add_argument("matrix", type=Path, help="the matrix file, e.g. matrix.yaml")
    p.add_argument("--executor", choices=matrix_mod.EXECUTORS, default="local")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument("--frameworks", type=_names, help="comma-separated subset of the matrix's frameworks")
    p.add_argument("--variants", type=_names, help="comma-separated CUDA variants (docker, slurm containers)")
    p.add_argument("--gpus", type=_names, help="comma-separated GPU types of the matrix")
    p.add_argument("--tasks", type=tasks.parse_tasks, help="comma-separated: cnn,rnn,resnet50")
    p.add_argument("--quick", action="store_true", help="--quick size for every cell")
    p.add_argument("--data", choices=("auto", "real", "synthetic"), help="override the matrix's data:")
    p.add_argument("--timeout", type=float, help="seconds per cell (overrides timeout_s)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--rerun-failed", action="store_true", help="run failed cells again")
    p.add_argument("--force", action="store_true", help="run every cell again (ok results are kept "
                                                         "if the new run fails)")
    p.set_defaults(handler=cmd_sweep)

