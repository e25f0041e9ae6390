"""Scale-out: waves of populations, a two-node Ray cluster, one study shared through PostgreSQL.

The Ray cluster runs inside fresh network and PID namespaces (``unshare``, as root): it listens
on nothing outside them, and ending the namespace's first process ends every Ray process. The
PostgreSQL server is a throwaway one on a unix socket in a temporary folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from fitwell.api import load_and_prepare, make_config
from fitwell.auto import auto
from fitwell.auto.executors import (
    LocalExecutor,
    PopulationJob,
    PopulationOutcome,
    estimated_cost,
    longest_first,
)
from fitwell.cli import main
from fitwell.errors import InputError

SEARCH = [
    "--dataset",
    "iris",
    "--time-budget",
    "none",
    "--trials",
    "8",
    "--parallel",
    "2",
    "--population-size",
    "2",
    "--max-epochs",
    "10",
    "--threads",
    "1",
    "--json",
]
ENV = os.environ | {
    "PYTHONUNBUFFERED": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
RAY = str(Path(sys.executable).with_name("ray"))


def _announce(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def _study(out: Path) -> Any:
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="fitwell-auto", storage=storage)


def _values(study: Any) -> list[tuple]:
    return [(t.number, t.state.name, t.value, dict(t.params)) for t in study.get_trials()]


# --------------------------------------------------------------------------- waves, no cluster
class ReversedExecutor(LocalExecutor):
    """Trains a wave's populations last-first (as a cluster might finish them) and fails the
    jobs whose first setting has ``fail_lr``."""

    def __init__(self, *args: Any, fail_lr: float | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fail_lr = fail_lr
        self.waves: list[int] = []

    def run_many(self, jobs):
        self.waves.append(len(jobs))
        outs: dict[int, PopulationOutcome] = {}
        for i in reversed(range(len(jobs))):
            if self.fail_lr is not None and jobs[i].settings[0]["lr"] == self.fail_lr:
                outs[i] = PopulationOutcome.failed("worker died 4 times")
            else:
                outs[i] = self.run(jobs[i])
        return [outs[i] for i in range(len(jobs))]


KW = dict(dataset="iris", time_budget=None, trials=8, population_size=2, max_epochs=8)


def _executor(**kw: Any) -> ReversedExecutor:
    prepared = load_and_prepare(make_config(None, dataset="iris", max_epochs=8))
    import torch

    return ReversedExecutor(prepared, device=torch.device("cpu"), threads=1, **kw)


def test_a_wave_is_told_in_trial_order_whatever_order_it_trained_in(tmp_path):
    executor = _executor()
    auto(**KW, parallel=3, out=tmp_path / "rev", executor=executor)
    auto(**KW, parallel=3, out=tmp_path / "local")
    # 3 populations of 2, then the last 2 trials, then the 2 best retrained side by side
    assert executor.waves == [3, 1, 2]
    reversed_study, local_study = _study(tmp_path / "rev"), _study(tmp_path / "local")
    assert _values(reversed_study) == _values(local_study)
    assert len(reversed_study.trials) == 8
    # Member seeds come from trial numbers.
    for t in reversed_study.trials:
        if "seed" in t.user_attrs:
            assert t.user_attrs["seed"] == 0 + 1000 + t.number


def test_parallel_one_asks_one_population_at_a_time():
    executor = _executor()
    run = auto(**KW, parallel=1, executor=executor)
    assert executor.waves == [1, 1, 1, 1]
    assert run.metrics["auto"]["search"]["populations"] == 4


def test_a_wave_starts_its_costliest_population_first():
    def job(hidden, batch_size=32, members=4):
        return PopulationJob(settings=[{"hidden": hidden, "batch_size": batch_size}] * members)

    wave = [job([128]), job([512, 512, 512]), job([64, 64, 64]), job([128], members=2)]
    costs = [estimated_cost(j, n_features=64, n_rows=1000) for j in wave]
    # 3x512 (590k weights) > 3x64 (12k) > 1x128 (8k) > 1x128 with half the members
    assert longest_first(costs) == [1, 2, 0, 3]
    # Smaller batches mean more steps, each with a fixed cost: never cheaper.
    assert estimated_cost(job([128], batch_size=8), 64, 1000) > costs[0]
    assert longest_first([1.0, 1.0, 2.0]) == [2, 0, 1]  # ties keep the jobs' order


def test_a_failed_population_becomes_fail_trials_with_the_reason_and_the_search_goes_on(
    tmp_path,
):
    probe = auto(**KW, parallel=2, out=tmp_path / "probe")
    # Fail the wave's second population in a second run of the same search.
    second = [t for t in _study(tmp_path / "probe").trials if t.user_attrs["population"] == 2]
    executor = _executor(fail_lr=float(second[0].params["lr"]))
    run = auto(**KW, parallel=2, out=tmp_path / "failing", executor=executor)
    study = _study(tmp_path / "failing")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [t.number for t in second]
    assert all(t.user_attrs["fail_reason"] == "worker died 4 times" for t in failed)
    search = run.metrics["auto"]["search"]
    # A failed trial counts toward --trials, as a diverged one always has.
    assert search["failed"] == 2 and search["trials"] == 8
    assert search["complete"] + search["pruned"] == 6
    assert probe.metrics["auto"]["search"]["failed"] == 0


def test_local_run_many_turns_a_setting_the_data_cannot_take_into_a_failed_outcome():
    reversed_executor = _executor()
    executor = LocalExecutor(reversed_executor.prepared, device=reversed_executor.device, threads=1)
    good = make_config(None, dataset="iris", max_epochs=3).to_dict()
    bad = good | {"dropout": 1.5}
    outs = executor.run_many([PopulationJob([bad]), PopulationJob([good])])
    assert outs[0].error is not None and "dropout" in outs[0].error and not outs[0].members
    assert outs[1].error is None and len(outs[1].members) == max(good["restarts"], good["ensemble"])


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"parallel": 0}, "`parallel` must be a whole number >= 1; got 0"),
        ({"executor": "rey"}, "Did you mean `ray`"),
        ({"address": "127.0.0.1:6379"}, "`address` is for the ray executor"),
    ],
)
def test_bad_scale_settings_are_refused_with_what_to_do(settings, match):
    with pytest.raises(InputError, match=match):
        auto(dataset="iris", time_budget=None, trials=2, max_epochs=3, **settings)


def test_the_cli_refuses_parallel_zero_with_exit_code_2(tmp_path, capsys):
    args = ["auto", "--dataset", "iris", "--trials", "2", "--time-budget", "none"]
    assert main([*args, "--parallel", "0", "--out", str(tmp_path / "r")]) == 2
    assert "`parallel` must be" in capsys.readouterr().err


def test_the_local_executor_needs_no_ray_and_the_ray_one_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    run = auto(dataset="iris", time_budget=None, trials=2, population_size=2, max_epochs=3)
    assert run.metrics["auto"]["search"]["trials"] == 2
    with pytest.raises(InputError, match=r"pip install 'fitwell\[ray\]'"):
        auto(dataset="iris", time_budget=None, trials=2, max_epochs=3, executor="ray")


# --------------------------------------------------------------------------- Ray cluster
def _namespace_descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Namespace:
    """A process in fresh network, PID and mount namespaces; ``run`` enters them."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--kill-child",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                "ip link set lo up && echo ready && exec sleep 100000",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"the namespace did not start: {line!r}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.init = int(children.split()[0])

    def command(self, args: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-n", "-p", "-m", "--", *args]

    def close(self) -> None:
        # The namespace's first process dies with unshare (--kill-child); every process in
        # the PID namespace dies with it. (SIGTERM would be passed on to that first process,
        # which as a namespace's init ignores it.)
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _ray_start(ns: Namespace, args: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        ns.command([RAY, "start", *args]), env=ENV, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def ray_cluster(request) -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("the Ray tests run the cluster in a network namespace: they need root")
    temp = tempfile.mkdtemp(prefix="fwray")  # short: Ray's socket paths must stay < 108 chars
    ns = Namespace()
    try:
        common = [
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        head = _ray_start(
            ns,
            [
                "--head",
                "--port=6379",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
                *common,
            ],
        )
        worker = _ray_start(
            ns, ["--address=127.0.0.1:6379", "--dashboard-agent-listen-port=52366", *common]
        )
        _announce(request, f"\nray: head node up in {head:.1f} s, second node in {worker:.1f} s")
        yield ns
    finally:
        ns.close()
        shutil.rmtree(temp, ignore_errors=True)


def _auto(args: list[str], out: Path, *, ns: Namespace | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fitwell.cli", "auto", *args, "--out", str(out)]
    return subprocess.Popen(
        ns.command(cmd) if ns else cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 180) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    doc = json.loads(stdout)  # stdout is the JSON document alone, whatever Ray printed
    doc["stderr"] = stderr
    return doc


def test_ray_two_nodes_choose_what_the_local_executor_chooses(ray_cluster, tmp_path):
    ray_run = _auto(
        [*SEARCH, "--executor", "ray", "--address", "127.0.0.1:6379"],
        tmp_path / "ray",
        ns=ray_cluster,
    )
    local = _finish(_auto(SEARCH, tmp_path / "local"))
    remote = _finish(ray_run)
    for key in ("best_trial", "best_val_loss", "trials", "populations", "confirmed"):
        assert remote["auto"]["search"][key] == local["auto"]["search"][key], key
    assert remote["best_settings"] == local["best_settings"]
    assert remote["test"] == local["test"]
    ray_study, local_study = _study(tmp_path / "ray"), _study(tmp_path / "local")
    assert _values(ray_study) == _values(local_study)
    nodes = {t.user_attrs["worker"].split("/")[0] for t in ray_study.trials}
    assert len(nodes) == 2  # both nodes trained populations


def test_a_killed_ray_worker_is_rerun_and_every_trial_is_accounted_for(ray_cluster, tmp_path):
    out = tmp_path / "kill"
    args = [*SEARCH, "--dataset", "digits", "--hidden", "32", "--max-epochs", "15"]
    args += ["--executor", "ray", "--address", "127.0.0.1:6379", "--no-repair"]
    proc = _auto(args, out, ns=ray_cluster)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        if (out / "study.journal").is_file():  # the search has started
            for pid in _namespace_descendants(ray_cluster.init):
                if "ray::train_population" in _cmdline(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
        time.sleep(0.1)
    doc = _finish(proc)
    assert killed is not None, "no Ray task was running during the search"
    assert "will be retried" in doc["stderr"]
    study = _study(out)
    states = [t.state for t in study.trials]
    assert len(states) == 8 and TrialState.RUNNING not in states
    assert doc["auto"]["search"]["complete"] + doc["auto"]["search"]["pruned"] == 8


# --------------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres(request) -> Iterator[str]:
    bindir = _postgres_bin()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"],
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=300,
        )
        bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed and could not be (needs root and apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the throwaway PostgreSQL server is started as the postgres user: needs root")
    temp = Path(tempfile.mkdtemp(prefix="fwpg"))
    shutil.chown(temp, "postgres")
    port = "5433"

    def pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    started = time.perf_counter()
    try:
        pg(
            str(bindir / "initdb"),
            *("-D", str(temp / "data"), "-U", "postgres", "--auth=trust", "--no-sync"),
            *("-E", "UTF8"),
        )
        initialised = time.perf_counter() - started
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(temp / "data"),
            "-l",
            str(temp / "log"),
            "-w",
            "-o",
            f"-p {port} -k {temp} -c listen_addresses='' -c fsync=off",
            "start",
        )
        pg(str(bindir / "createdb"), "-h", str(temp), "-p", port, "optuna")
        _announce(
            request,
            f"\npostgresql: initdb {initialised:.1f} s, up with a database "
            f"{time.perf_counter() - started:.1f} s after start",
        )
        yield f"postgresql+psycopg://postgres@/optuna?host={temp}&port={port}"
    finally:
        if (temp / "data" / "postmaster.pid").is_file():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(temp / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )
        shutil.rmtree(temp, ignore_errors=True)


def test_two_drivers_share_one_postgresql_study(postgres, tmp_path):
    args = [*SEARCH, "--storage", postgres, "--study-name", "shared"]
    procs = [_auto(args, tmp_path / f"driver{i}") for i in range(2)]
    docs = [_finish(p) for p in procs]
    storage = optuna.storages.RDBStorage(postgres)
    try:
        trials = optuna.load_study(study_name="shared", storage=storage).trials
    finally:
        storage.engine.dispose()  # its pooled connections closed now, not at collection
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and len(numbers) >= 8
    assert TrialState.RUNNING not in [t.state for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: (t.value, t.number))
    for doc in docs:
        assert doc["auto"]["search"]["best_trial"] == best.number
        assert doc["auto"]["search"]["best_val_loss"] == best.value
