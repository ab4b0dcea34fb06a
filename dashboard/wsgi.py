"""The WSGI entry point for another WSGI server, configured from the environment (`dinoscope serve --workers N`
runs gunicorn itself and is the simpler way):

    DINOSCOPE_DB=/srv/dinoscope.db DINOSCOPE_CACHE_DIR=/srv/dinoscope-cache DINOSCOPE_SECRET_KEY=... \\
    DINOSCOPE_USERS_FILE=/srv/dinoscope-users DINOSCOPE_CELERY=redis://127.0.0.1:6379/0 \\
        gunicorn --workers 4 --worker-class gthread --threads 8 'dashboard.wsgi:server'

DINOSCOPE_SECRET_KEY must be set when there are several workers: they all have to sign with the same key.
DINOSCOPE_USERS_FILE (a login), DINOSCOPE_CELERY (background callbacks in `dinoscope worker`) and
DINOSCOPE_FRAME_ANCESTORS (the pages that may frame the dashboard) are optional, as are the login limits (see
README) and DINOSCOPE_LOG_LEVEL (default INFO).
"""

import logging
import os

from dashboard.app import create_app
from dashboard.settings import SECRET_ENV, Settings
from db.logs import LOG_FORMAT, LOG_LEVEL_ENV

# A WSGI server normally runs several processes, and this module cannot tell how many.
MISSING_SECRET_WARNING = (
    f"{SECRET_ENV} is not set: each worker process signs background-job handles (and sessions) with a key of its "
    "own, so with several workers a background result (t-SNE, UMAP, an upload's neighbours) is lost whenever its "
    f"page's poll reaches another worker. Give every worker the same key: export {SECRET_ENV}=$(python -c "
    "'import secrets; print(secrets.token_hex(32))')")

logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), format=LOG_FORMAT)
settings = Settings.from_env()
if not settings.secret_key:
    logging.getLogger(__name__).warning(MISSING_SECRET_WARNING)
server = create_app(settings).server
