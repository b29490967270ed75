"""Settings for the test suite: the product's settings, with one change.

Django hashes passwords with PBKDF2 at 1,000,000 rounds, about a quarter of a
second of CPU each time. The suite creates a user in most of its 1,400 tests and
logs many of them in, so that cost alone was a third of the suite's time. A test
user's password protects nothing, so the tests hash with MD5; every other
setting is the product's own (the processes the tests start use this module too,
so a password set here can be checked there).
"""

import os
import sys

# The suite's own process counts its metrics in memory (prometheus_client's
# single-process mode): an inherited PROMETHEUS_MULTIPROC_DIR would add every
# earlier run's files to the values the tests check. Removed here, before
# anything imports prometheus_client (which reads it at import), and only in the
# pytest process: the web servers and workers the tests start use this module
# too, and tests/kaizen_web/test_metrics_live.py gives them a directory of their own.
if "pytest" in sys.modules:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from kaizen_web.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
