"""The backend's RQ worker class: models stay loaded between jobs, heartbeats go on during a job.

RQ's default `Worker` forks a fresh work horse per job, which loads the detector and segmenter again (about half
the cost of a pre-labeled image). RQ's `SimpleWorker` runs jobs in its own process, so what one job loads serves
the next, but it sends no heartbeat while a job runs, and abandoned-job detection (JOB_HEARTBEAT_TIMEOUT) reads
them. This worker is a SimpleWorker that beats from a thread while the job runs:

    rq worker backend --url redis://HOST:6379/0 --worker-class backend.core.worker.ModelKeepingWorker

A job that takes the process down (out of memory, SIGKILL) takes the worker with it: its heartbeats stop, the
job is retried as before, and the container's restart policy brings the worker back.
"""

from __future__ import annotations

import logging
import threading

from rq.worker import SimpleWorker, WorkerStatus

logger = logging.getLogger(__name__)


class ModelKeepingWorker(SimpleWorker):
    def execute_job(self, job, queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beats = threading.Thread(target=self._beat, args=(job, execution, done), name="rq-heartbeat", daemon=True)
        beats.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beats.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job, execution, done: threading.Event) -> None:
        """Every job_monitoring_interval seconds: the worker's, the execution's and the job's heartbeat, as RQ's
        forking worker sends them while it watches its work horse."""
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception as exc:  # a Redis hiccup: the next beat tries again
                logger.warning("job %s: heartbeat not sent (%s)", job.id, exc)
