"""The WSGI entry point for a production server, configured from the environment:

    DINOSCOPE_DB=/srv/dinoscope.db DINOSCOPE_CACHE_DIR=/srv/dinoscope-cache DINOSCOPE_SECRET_KEY=... \\
        gunicorn --threads 8 'dashboard.wsgi:server'
"""

from dashboard.app import create_app
from dashboard.settings import Settings

server = create_app(Settings.from_env()).server
