"""Background jobs that are started from a clean process, never forked from the threaded web server.

Dash's DiskcacheManager forks each job from the server process. A fork copies every lock as it is at that moment,
and if another request thread is inside SQLite (or an OpenMP runtime) then, the job waits forever on a lock that
no thread will release. Here jobs are forked by multiprocess's fork server instead: a separate, single-threaded
process started by exec, which has already imported (and compiled) what the jobs need.
"""

from __future__ import annotations

import multiprocess
from dash import DiskcacheManager

# Imported by the fork server before it forks any job: the analysis code, with UMAP's numba code compiled once.
PRELOAD = ["dashboard.analysis.warm"]


class ForkServerDiskcacheManager(DiskcacheManager):
    def call_job_fn(self, key, job_fn, args, context):
        context_ = multiprocess.get_context("forkserver")
        context_.set_forkserver_preload(PRELOAD)
        process = context_.Process(target=job_fn, args=(key, self._make_progress_key(key), args, context))
        process.start()
        return process.pid
