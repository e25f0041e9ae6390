"""Populations as Ray tasks: the same jobs and outcomes as :class:`LocalExecutor`, on a cluster.

The driver (the ``fitwell auto`` process) is the only process that talks to the study. It puts
the prepared training and validation arrays into Ray's object store once; every task reads them
from there (zero-copy on the node that holds them), trains one population with
:class:`~fitwell.auto.executors.LocalExecutor` and returns the weights-free outcome. The sealed
test split never leaves the driver.

A task whose worker process or node dies is run again, up to ``max_retries`` times, from the
start (a population writes nothing, so a rerun has no side effects to undo). A task that still
fails, or raises, comes back from :meth:`RayExecutor.run_many` as a failed outcome with the
reason; the search tells its trials FAIL and goes on.

Imported only for ``executor="ray"``: the core install needs no Ray (``pip install
'fitwell[ray]'``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from fitwell.auto.executors import (
    LocalExecutor,
    PopulationJob,
    PopulationOutcome,
    estimated_cost,
    longest_first,
)
from fitwell.data import PreparedData
from fitwell.data.splitting import SealedTest
from fitwell.errors import InputError

MAX_RETRIES = 3  # reruns of a task whose worker died (Ray's default, stated here on purpose)


def _kept_by_the_driver() -> Any:
    raise RuntimeError("the sealed test split stays with the driver; workers never read it")


def without_test(prepared: PreparedData) -> PreparedData:
    """The prepared data a worker needs: train and validation rows, the encoders, no test."""
    return dataclasses.replace(prepared, test=SealedTest(_kept_by_the_driver, prepared.test.n_rows))


def train_population(
    prepared: PreparedData, job: PopulationJob, device: str, threads: int
) -> PopulationOutcome:
    """A Ray task's body: one population on the worker, with the driver's thread count."""
    import ray
    import torch

    from fitwell.threads import configure_threads, limit_blas_threads

    n = configure_threads(threads)
    with limit_blas_threads(n):
        out = LocalExecutor(prepared, device=torch.device(device), threads=n).run(job)
    out.worker = f"{ray.get_runtime_context().get_node_id()[:12]}/{os.getpid()}"
    out.fitted = None  # the weights stay on the worker: the driver trains its final run itself
    return out


def _reason(exc: BaseException) -> str:
    """One line for a failed task: the task's own error when it raised, else Ray's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


class RayExecutor:
    """Trains each population as one Ray task.

    Parameters
    ----------
    prepared : PreparedData
        The arrays every task trains on; put in the object store once.
    device : torch.device or str
        ``cuda`` asks one GPU per task (``num_gpus=1``); otherwise CPU only.
    threads : int, optional
        Torch threads per task and the task's ``num_cpus`` (default 1).
    address : str, optional
        ``HOST:PORT`` of a running cluster's head; default: start Ray on this machine for the
        run (stopped by :meth:`close`).
    max_retries : int, default 3
        Reruns of a task whose worker process or node died.
    log : callable, optional
        Receives one line: how long joining or starting Ray took, and the CPUs it offers.
    """

    def __init__(
        self,
        prepared: PreparedData,
        *,
        device: Any,
        threads: int | None,
        address: str | None = None,
        max_retries: int = MAX_RETRIES,
        log: Callable[[str], None] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise InputError(
                "--executor ray needs Ray; got no `ray` module. Install the extra: "
                "pip install 'fitwell[ray]'."
            ) from None
        self._ray = ray
        self.threads = threads or 1
        self.device = str(device)
        self.max_retries = max_retries
        started = time.perf_counter()
        self._owned = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if address is None:
                # A local instance of our own: no token files from earlier clusters apply.
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            try:
                ray.init(
                    # "local": a new instance even when RAY_ADDRESS is set or another Ray runs
                    # on this machine (Ray's default, None, would join those).
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(
                    f"could not join the Ray cluster at {address!r}: {_reason(exc)}. Start it "
                    "with `ray start --head` (see docs/scale.md) or leave out --address."
                ) from None
            self._owned = True
        resources = ray.cluster_resources()
        cpus = resources.get("CPU", 0)
        if self.device.startswith("cuda") and not resources.get("GPU"):
            # A task asking for a GPU the cluster lacks would wait forever, unscheduled.
            self.close()
            raise InputError(
                f"--device {self.device} asks one GPU per population; got a Ray cluster with no "
                "GPUs. Use --device cpu, or add nodes with GPUs."
            )
        if log is not None:
            where = f"joined {address}" if address else "started on this machine"
            log(
                f"      ray: {where} in {time.perf_counter() - started:.1f} s, "
                f"{len(ray.nodes())} node(s), {cpus:g} CPUs"
            )
        self._n_features, self._n_rows = prepared.n_features, len(prepared.x_train)
        self._data: Any = ray.put(without_test(prepared))
        self._task = ray.remote(train_population).options(
            num_cpus=self.threads,
            num_gpus=1 if self.device.startswith("cuda") else 0,
            max_retries=max_retries,
            retry_exceptions=False,  # a setting the data cannot take fails the same each time
        )

    def submit(self, job: PopulationJob) -> Any:
        """Start one job; returns Ray's reference to its outcome."""
        return self._task.remote(self._data, job, self.device, self.threads)

    def run(self, job: PopulationJob) -> PopulationOutcome:
        try:
            return self._ray.get(self.submit(job))
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):
                raise exc.cause from None
            raise

    def run_many(self, jobs: Sequence[PopulationJob]) -> list[PopulationOutcome]:
        """Every job at once, as the cluster has room; outcomes in the jobs' order.

        Submitted longest first (Ray starts queued tasks in the order they came), so that a
        wave's long population does not start last on a node while the others sit idle.
        """
        costs = [estimated_cost(job, self._n_features, self._n_rows) for job in jobs]
        refs: dict[int, Any] = {i: self.submit(jobs[i]) for i in longest_first(costs)}
        outcomes = []
        for i in range(len(jobs)):
            try:
                outcomes.append(self._ray.get(refs[i]))
            except self._ray.exceptions.RayError as exc:
                outcomes.append(PopulationOutcome.failed(_reason(exc)))
        return outcomes

    def close(self) -> None:
        """Drop the shared arrays; stop Ray when this executor started or joined it."""
        self._data = None
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False
