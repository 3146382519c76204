"""The one place that wires the system: settings in, the job service with its policy and
accounting, and the backends, catalog and LoRAs it stands on, out.

The server (:func:`fluxserve.api.app.create_app`, which :func:`fluxserve.server.create_app`
extends) and ``fluxserve worker`` (:func:`run_worker_process`) both build theirs with
:func:`build_system`, so the two never drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from fluxserve.accounts import Accounting, AccountStore, account_store
from fluxserve.accounts.ledger import AccountLimits
from fluxserve.backends import Backends, open_backends, open_database
from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog
from fluxserve.engines import Engine
from fluxserve.jobs import JobPolicy, JobService
from fluxserve.jobs.fleet import EngineWorkers, batch_policy, diffusers_engine, worker_devices, worker_name
from fluxserve.jobs.routing import OverflowRouter
from fluxserve.loras import LoraLibrary
from fluxserve.safety import Moderator
from fluxserve.settings import Settings
from fluxserve.upsampling import PromptUpsampler
from fluxserve.upstreams import overflow_engine, with_upstreams

log = logging.getLogger("fluxserve.worker")


@dataclass
class System:
    """One process's parts below the HTTP API."""

    settings: Settings
    backends: Backends
    catalog: ModelCatalog
    service: JobService
    """The job service, with its policy and accounting."""
    accounts: AccountStore
    loras: LoraLibrary

    def engine(self, device: str) -> Engine:
        """The diffusers engine for ``device``, upstream providers in front of it."""
        engine = diffusers_engine(self.settings, self.catalog, device, self.loras)
        return with_upstreams(engine, self.settings, self.catalog)

    def lane(self) -> Engine | None:
        """The upstream lane's engine (the jobs overflow sends upstream), or None when no
        model has ``route = "overflow"``."""
        return overflow_engine(self.settings, self.catalog)

    def close(self) -> None:
        """Close the backends and the account store."""
        self.backends.close()
        self.accounts.close()


def open_account_store(settings: Settings) -> AccountStore:
    """The account store on a connection of its own to the settings' database (PostgreSQL,
    the SQLite file, or in memory for the memory backend)."""
    return account_store(open_database(settings), postgres=bool(settings.database_url))


def build_system(settings: Settings, upsampler: PromptUpsampler | None = None) -> System:
    """Open the backends and the account store the settings name, and build the job service
    (moderation, ``upsampler``, queue bound, attempts, retention) with its accounting. Jobs end
    in any process that runs them, so every process settles or releases credit holds."""
    backends = open_backends(settings)
    catalog = ModelCatalog.from_settings(settings)
    moderator = Moderator.from_settings(settings)
    service = JobService(
        backends.jobs,
        backends.queue,
        backends.webhooks,
        backends.storage,
        moderator,
        upsampler,
        scene_models=frozenset(e.id for e in catalog if e.checkpoint == BUILTIN_CHECKPOINT),
        policy=JobPolicy(
            settings.max_queued_jobs,
            settings.max_attempts,
            settings.retention_s,
            settings.fair_share,
            settings.png_compress_level,
        ),
        bus=backends.bus,
    )
    accounts = open_account_store(settings)
    limits = AccountLimits(max_active_max_models=settings.account_max_active_max_models)
    service.accounting = Accounting(accounts, catalog, limits)
    if any(e.overflow is not None for e in catalog):
        service.router = OverflowRouter(
            catalog, backends.queue, service.accounting, lane_size=settings.overflow_concurrency
        )
    loras = LoraLibrary(settings.lora_dirs)
    return System(settings, backends, catalog, service, accounts, loras)


def run_worker_process(settings: Settings) -> int:
    """``fluxserve worker``: engine workers (one per device in ``gpus``) that take jobs from the
    shared PostgreSQL database, with live events and the stalled-job reaper, and no HTTP API.
    SIGTERM or SIGINT lets the running jobs finish, then returns. Returns the exit status."""
    return asyncio.run(_worker_main(settings))


async def _worker_main(settings: Settings) -> int:
    if not settings.database_url:  # only PostgreSQL hands jobs to other processes
        log.error("fluxserve worker needs database_url (PostgreSQL)")
        return 2
    system = build_system(settings)
    catalog, service = system.catalog, system.service
    dispatch = system.backends.dispatch
    assert dispatch is not None
    engines: list[tuple[str, Engine]] = [
        (worker_name(device, i), system.engine(device))
        for i, device in enumerate(worker_devices(settings.gpus, settings.device))
    ]
    try:
        workers = EngineWorkers(
            service,
            catalog,
            engines,
            dispatch,
            settings.worker_models,
            batching=batch_policy(settings),
            lane=system.lane(),
            lane_size=settings.overflow_concurrency,
        )
    except ValueError as exc:
        log.error("%s", exc)
        system.close()
        return 2
    loop = asyncio.get_running_loop()
    service.events.bind(loop)
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    side = [
        asyncio.create_task(service.events.run()),
        asyncio.create_task(dispatch.reap_forever(settings.max_attempts, service.job_ended)),
    ]
    status = 0
    try:
        error = await workers.load()
        if error is not None:
            log.error("no model could be loaded: %s", error)
            status = 1
        else:
            names = ", ".join(w.name for w in workers.workers)
            print(f"fluxserve worker ready: {names} take {', '.join(workers.loaded_models())}", flush=True)
            await workers.run()
    except asyncio.CancelledError:
        log.info("stopping: the running jobs finish first")
    finally:
        await workers.drain()  # results generated before the stop are stored
        for t in side:
            t.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        await dispatch.close()
        system.close()
    return status
