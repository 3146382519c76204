"""Durable jobs: the store (and queue), the service that submits and waits, the worker."""

from fluxserve.jobs.models import TERMINAL, Job, JobStatus
from fluxserve.jobs.service import JobService
from fluxserve.jobs.store import JobStore, SQLiteJobStore
from fluxserve.jobs.worker import Worker

__all__ = ["TERMINAL", "Job", "JobService", "JobStatus", "JobStore", "SQLiteJobStore", "Worker"]
