"""Scale-out: trials per minute for one search on this process and on Ray, and what a driver costs.

1. The same search (same seed, trials and ``--parallel``; repairs off) three ways: the local
   executor, a Ray cluster of one node (1 CPU) and of two nodes (1 CPU each), all on this
   machine inside a network namespace. Trials per minute count the search's trials over the span
   from the first trial's start to the last one's end (start-up, baseline, confirmation and the
   final training left out); Ray's start-up (``ray start``, the driver joining) is shown apart.
2. The driver's own cost per trial: ask (populations of 8, one shape), report a 40-epoch curve
   every 5 epochs, tell, on an in-memory, journal-file and PostgreSQL study (no training).
   Ray's cost per task: a no-op task's round trip with the shared arrays as argument.
3. A model from those numbers: how many workers one driver keeps busy, and how many one
   PostgreSQL server does (its own CPU seconds per trial, from /proc), at 1, 10 and 60 s per
   population of 8.

Needs root (the Ray cluster runs in ``unshare -n``; PostgreSQL runs as the postgres user).

    python benchmarks/scale.py [--trials 16] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ENV = os.environ | {
    "PYTHONPATH": str(ROOT / "src"),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
RAY = str(Path(sys.executable).with_name("ray"))
POPULATION = 8
TRIALS = 16
MODEL_SECONDS = (1.0, 10.0, 60.0)


# ------------------------------------------------------------------------- a namespaced cluster
class Namespace:
    """A process in fresh network, PID and mount namespaces; killing it ends all inside."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--kill-child", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c"]
            + ["ip link set lo up && echo ready && exec sleep 100000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.init = int(children.split()[0])

    def command(self, args: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-n", "-p", "-m", "--", *args]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def ray_start(ns: Namespace, args: list[str]) -> float:
    started = time.perf_counter()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000"]
    subprocess.run(
        ns.command([RAY, "start", *args, *common, "--disable-usage-stats"]),
        env=ENV,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def search(args: list[str], out: Path, ns: Namespace | None) -> dict:
    """One `fitwell auto` search; trials per minute over the trials' own span."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    cmd = [sys.executable, "-m", "fitwell.cli", "auto", *args, "--out", str(out), "--json"]
    started = time.perf_counter()
    proc = subprocess.run(
        ns.command(cmd) if ns else cmd, env=ENV, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    doc = json.loads(proc.stdout)
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    trials = optuna.load_study(study_name="fitwell-auto", storage=storage).trials
    return summary(trials, doc, wall)


def summary(trials: list, doc: dict, wall: float) -> dict:
    span = (
        max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    ).total_seconds()
    workers = {t.user_attrs.get("worker", "").split("/")[0] for t in trials}
    # Seconds the populations trained (each trial carries its population's share): over the
    # span times the nodes, how busy the nodes were; the rest is waiting for a wave's last one.
    trained = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
    return {
        "trials": len(trials),
        "search_span_s": round(span, 2),
        "trials_per_minute": round(60 * len(trials) / span, 1),
        "nodes_used": len(workers - {""}),
        "best_trial": doc["auto"]["search"]["best_trial"],
        "best_val_loss": doc["auto"]["search"]["best_val_loss"],
        "wall_s": round(wall, 1),
        "population_seconds": round(trained, 1),
        "busy_share": round(trained / (span * max(len(workers - {""}), 1)), 2),
    }


def search_in_process(
    out: Path, hidden: list[int], max_epochs: int, population_size: int, parallel: int
) -> dict:
    """The same search through the Python API (no command-line start-up)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from fitwell.auto import auto

    started = time.perf_counter()
    run = auto(
        dataset="digits",
        hidden=hidden,
        max_epochs=max_epochs,
        threads=1,
        time_budget=None,
        trials=TRIALS,
        repair=False,
        population_size=population_size,
        parallel=parallel,
        out=out,
    )
    wall = time.perf_counter() - started
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    trials = optuna.load_study(study_name="fitwell-auto", storage=storage).trials
    return summary(trials, {"auto": run.metrics["auto"]}, wall)


def ray_task_overhead(ns: Namespace, n: int = 200) -> tuple[float, float]:
    """A driver joining the cluster (seconds), and seconds per no-op task round trip
    (sequential, shared arrays as the argument)."""
    code = f"""
import time, numpy as np, ray
t = time.perf_counter()
ray.init(address="127.0.0.1:6379", log_to_driver=False)
print(time.perf_counter() - t)
data = ray.put(np.zeros((1000, 64)))
noop = ray.remote(lambda d: 0).options(num_cpus=1)
ray.get(noop.remote(data))
t = time.perf_counter()
for _ in range({n}):
    ray.get(noop.remote(data))
print((time.perf_counter() - t) / {n})
"""
    proc = subprocess.run(
        ns.command([sys.executable, "-c", code]), env=ENV, capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    return float(lines[-2]), float(lines[-1])


# ------------------------------------------------------------------------- driver cost
def driver_cost(storage: object, populations: int = 6) -> float:
    """Seconds per trial of ask (shape sampled, 7 queued), 8 reports, user attrs, tell."""
    from types import SimpleNamespace

    from fitwell.auto import search as space

    study = space.open_study(storage, f"bench-{time.time_ns()}", seed=0, resume=True)
    curve = [1.0 / (e + 1) for e in range(40)]
    started = time.perf_counter()
    for _ in range(populations):
        trials, _ = space.ask_population(study, POPULATION)
        for t in trials:
            member = SimpleNamespace(
                val_curve=curve,
                val_score=0.9,
                best_epoch=40,
                epochs_run=40,
                stop_reason="max_epochs",
                seed=t.number,
                val_loss=curve[-1] + 1e-3 * t.number,
                pruned_at=None,
            )
            space.tell_member(study, t, member, report_every=5)
    return (time.perf_counter() - started) / (populations * POPULATION)


def process_cpu(pid: int) -> float:
    """CPU seconds of a process, its live children and its reaped ones."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        me = int(stat.split("/")[2])
        if me == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
            if me == pid:
                total += (int(fields[13]) + int(fields[14])) / tick
    return total


def postgres_costs() -> dict | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or os.geteuid() != 0:
        return None
    bindir = Path(found[-1]).parent
    temp = Path(tempfile.mkdtemp(prefix="fwpg"))
    shutil.chown(temp, "postgres")

    def pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    data = str(temp / "data")
    try:
        pg(str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-p 5434 -k {temp} -c listen_addresses='' -c fsync=off"
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            data,
            "-l",
            str(temp / "log"),
            "-w",
            "-o",
            options,
            "start",
        )
        pg(str(bindir / "createdb"), "-h", str(temp), "-p", "5434", "optuna")
        import optuna

        storage = optuna.storages.RDBStorage(
            f"postgresql+psycopg://postgres@/optuna?host={temp}&port=5434"
        )
        postmaster = int((temp / "data" / "postmaster.pid").read_text().split()[0])
        driver_cost(storage, populations=1)  # schema and connections made before timing
        cpu = process_cpu(postmaster)
        populations = 6
        per_trial = driver_cost(storage, populations=populations)
        server = (process_cpu(postmaster) - cpu) / (populations * POPULATION)
        storage.engine.dispose()
        return {"driver_s_per_trial": per_trial, "server_cpu_s_per_trial": server}
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", data]
            + ["-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--hidden", default="64", help="the trials' widths (longer populations)")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=4, help="populations per wave")
    parser.add_argument("--population-size", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    opts = parser.parse_args()
    global TRIALS
    TRIALS = opts.trials
    if os.geteuid() != 0:
        sys.exit("benchmarks/scale.py needs root (a network namespace for Ray, PostgreSQL).")
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    args = ["--dataset", "digits", "--hidden", opts.hidden, "--max-epochs", str(opts.max_epochs)]
    args += ["--threads", "1"]
    args += ["--time-budget", "none", "--trials", str(opts.trials), "--no-repair"]
    args += ["--population-size", str(opts.population_size), "--parallel", str(opts.parallel)]
    work = Path(tempfile.mkdtemp(prefix="fwbench"))
    rows: dict[str, dict] = {}
    extra: dict[str, float] = {}
    rows["local"] = search(args, work / "local", None)
    widths = [int(w) for w in opts.hidden.split(",")]
    rows["local, API"] = search_in_process(
        work / "api", widths, opts.max_epochs, opts.population_size, opts.parallel
    )
    temp = tempfile.mkdtemp(prefix="fwray")
    ns = Namespace()
    try:
        head = ["--head", "--port=6379", "--include-dashboard=false", f"--temp-dir={temp}"]
        extra["ray_head_start_s"] = ray_start(ns, head)
        ray = [*args, "--executor", "ray", "--address", "127.0.0.1:6379"]
        rows["ray, 1 node"] = search(ray, work / "ray1", ns)
        extra["ray_driver_join_s"], extra["ray_task_round_trip_s"] = ray_task_overhead(ns)
        second = ["--address=127.0.0.1:6379", "--dashboard-agent-listen-port=52366"]
        extra["ray_second_node_start_s"] = ray_start(ns, second)
        rows["ray, 2 nodes"] = search(ray, work / "ray2", ns)
    finally:
        ns.close()
        shutil.rmtree(temp, ignore_errors=True)
    costs = {
        "memory": driver_cost(optuna.storages.InMemoryStorage()),
        "journal file": driver_cost(JournalStorage(JournalFileBackend(str(work / "j.log")))),
    }
    pg = postgres_costs()
    if pg is not None:
        costs["postgresql"] = pg["driver_s_per_trial"]
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"search: digits, {opts.trials} trials, populations of {opts.population_size}, "
        f"--parallel {opts.parallel}, 1 thread each"
    )
    print(f"{'executor':<14}{'trials/min':>11}{'span s':>8}{'nodes':>7}{'busy':>6}{'best':>6}")
    for name, r in rows.items():
        print(
            f"{name:<14}{r['trials_per_minute']:>11.1f}{r['search_span_s']:>8.1f}"
            f"{r['nodes_used']:>7}{r['busy_share']:>6.2f}{r['best_trial']:>6}"
        )
    one, two = rows["ray, 1 node"], rows["ray, 2 nodes"]
    print(f"2 nodes / 1 node: {two['trials_per_minute'] / one['trials_per_minute']:.2f}x")
    print(
        f"ray start: head {extra['ray_head_start_s']:.1f} s, second node "
        f"{extra['ray_second_node_start_s']:.1f} s, a driver joining "
        f"{extra['ray_driver_join_s']:.2f} s; task round trip "
        f"{1000 * extra['ray_task_round_trip_s']:.1f} ms"
    )
    print(
        "driver cost per trial (ask, 8 reports, tell): "
        + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in costs.items())
    )
    model = []
    task = extra["ray_task_round_trip_s"]
    for seconds in MODEL_SECONDS:
        row: dict[str, float] = {"population_s": seconds}
        for k, v in costs.items():
            # A driver is busy POPULATION * v + one task round trip per population; each
            # worker needs one population every `seconds`.
            row[f"workers_per_driver_{k}"] = seconds / (POPULATION * v + task)
        if pg is not None:
            row["workers_per_postgresql_core"] = seconds / (
                POPULATION * pg["server_cpu_s_per_trial"]
            )
        model.append(row)
    if pg is not None:
        print(f"postgresql server CPU per trial: {1000 * pg['server_cpu_s_per_trial']:.1f} ms")
    keys = [k for k in model[0] if k != "population_s"]
    print(f"{'population s':<14}" + "".join(f"{k.replace('workers_per_', ''):>24}" for k in keys))
    for row in model:
        print(f"{row['population_s']:<14g}" + "".join(f"{row[k]:>24.0f}" for k in keys))
    result = {
        "command": "python benchmarks/scale.py --trials "
        + f"{opts.trials} --hidden {opts.hidden} --max-epochs {opts.max_epochs}"
        + f" --parallel {opts.parallel} --population-size {opts.population_size}",
        "machine": f"{os.cpu_count()} CPUs (shared)",
        "search_args": args,
        "executors": rows,
        "startup": extra,
        "driver_seconds_per_trial": costs,
        "postgresql": pg,
        "model": model,
    }
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
