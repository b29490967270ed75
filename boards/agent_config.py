"""Moved to ``boards.agents.spec``. This old path is the same module, kept only
until the modules of the other issue-11 branches that still import it are
updated after the merge; then this file goes."""

import sys

from boards.agents import spec

sys.modules[__name__] = spec
