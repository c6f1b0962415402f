"""gunicorn settings for examples/authz_app.py with collector's hooks.

    gunicorn -c examples/gunicorn.conf.py examples.authz_app:app

Each sync worker gets its own analytics ring (post_fork), closes it on exit
(worker_exit), and the master reports the rings of workers that died
(child_exit); collector-daemon drains them all into Redis.
"""

import os

from collector.gunicorn import install

bind = os.environ.get("AUTHZ_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("AUTHZ_WORKERS", str(os.cpu_count() or 2)))
worker_class = "sync"
preload_app = True  # import the app once in the master; the hooks make forks safe
accesslog = None
graceful_timeout = 10

install(globals())
