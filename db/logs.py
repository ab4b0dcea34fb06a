"""How every dinoscope process logs, the command line's and a WSGI server's alike: the environment variable that
sets the level, and the format of a line."""

LOG_LEVEL_ENV = "DINOSCOPE_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
