"""Durable jobs: the service that owns a job's life, the worker, webhooks and live events."""

from fluxserve.jobs.service import JobPolicy, JobService, QueueFull
from fluxserve.jobs.worker import Worker
from fluxserve.records import TERMINAL, Job, JobStatus

__all__ = ["TERMINAL", "Job", "JobPolicy", "JobService", "JobStatus", "QueueFull", "Worker"]
