"""Run tracking in the manner of ``t9k.em``: record hyper-parameters and metrics of a
training run in readable files, and upload runs to a shared run store.

Environment: ``EM_RUN_PARENT_DIR`` (local runs, default ``.em/runs``), ``EM_RUN_STORE``
(run store root, default ``.em/store``), ``EM_USER`` (the user of '/<user>/' folder paths),
``EM_FSYNC_SECS`` (how often metric appends are fsynced, default 1; 0 = every line),
``EM_UPLOAD_INTERVAL_SECS`` (least time between background uploads, default 5).

matplotlib and tensorboardX are optional and imported only where they are used.
"""

from kubelearn.em.reader import MetricRecord, RunRecord, find_run, list_runs, load_run
from kubelearn.em.run import COMPLETE, FAILED, RUNNING, Run, create_run
from kubelearn.em.store import UploadConflictError

__all__ = [
    "COMPLETE",
    "FAILED",
    "RUNNING",
    "MetricRecord",
    "Run",
    "RunRecord",
    "UploadConflictError",
    "create_run",
    "find_run",
    "list_runs",
    "load_run",
]
