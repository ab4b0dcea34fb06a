"""The WSGI entry point for another WSGI server, configured from the environment (`dinoscope serve --workers N`
runs gunicorn itself and is the simpler way):

    DINOSCOPE_DB=/srv/dinoscope.db DINOSCOPE_CACHE_DIR=/srv/dinoscope-cache DINOSCOPE_SECRET_KEY=... \\
    DINOSCOPE_USERS_FILE=/srv/dinoscope-users DINOSCOPE_CELERY=redis://127.0.0.1:6379/0 \\
        gunicorn --workers 4 --worker-class gthread --threads 8 'dashboard.wsgi:server'

DINOSCOPE_SECRET_KEY must be set when there are several workers: they all have to sign with the same key.
DINOSCOPE_USERS_FILE (a login) and DINOSCOPE_CELERY (background callbacks in `dinoscope worker`) are optional.
"""

from dashboard.app import create_app
from dashboard.settings import Settings

server = create_app(Settings.from_env()).server
