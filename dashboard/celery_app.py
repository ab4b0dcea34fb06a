"""Celery's entry point for the dashboard's background callbacks, configured from the environment like
dashboard.wsgi (DINOSCOPE_DB, DINOSCOPE_CACHE_DIR, DINOSCOPE_CELERY):

    DINOSCOPE_DB=/srv/dinoscope.db DINOSCOPE_CACHE_DIR=/srv/dinoscope-cache \\
    DINOSCOPE_CELERY=redis://127.0.0.1:6379/0 celery -A dashboard.celery_app worker --concurrency 2

`dinoscope worker` runs the same worker from its command-line options.
"""

from dashboard.app import create_worker
from dashboard.settings import Settings

app = create_worker(Settings.from_env())
