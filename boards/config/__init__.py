"""Boards, columns and agents declared in a YAML file (the format is documented
at the top of ``examples/README.md``).

Three steps, so that a file with any mistake writes nothing:

1. ``config_parse`` / ``config_load`` (``parse``) read the YAML as a node tree
   (``read``), so every value keeps the line it came from, check every field,
   then check the file against the database (agent boards that exist, columns
   that would be removed while they hold tasks). All errors are gathered, in
   line order, and raised together as one ``ConfigError``, each as
   ``FILE:LINE: field.path: message``.
2. ``config_apply`` (``apply``) is the only writer: in one transaction it
   re-checks against the database under the board locks, then creates or
   updates boards (by slug), columns (by role within a board) and agents (by
   name), touching only rows whose values differ, so applying the same file
   twice writes nothing. An agent's cascade is stored in its normal form
   (boards.agents.spec), so it compares equal when unchanged; a change to its
   prompt fields starts a new prompt version.
3. After commit, changed boards are re-broadcast and pulled, since a raised WIP
   limit or a new agent may free capacity at once.
"""

from boards.config.apply import ApplyReport, Change, config_apply
from boards.config.parse import (
    REQUIRED_ROLES,
    ROLE_ORDER,
    AgentSpec,
    BoardSpec,
    ColumnSpec,
    ConfigDocument,
    ConfigError,
    DemoTaskSpec,
    ProposalSpec,
    Reference,
    config_load,
    config_parse,
)

__all__ = [
    "REQUIRED_ROLES",
    "ROLE_ORDER",
    "AgentSpec",
    "ApplyReport",
    "BoardSpec",
    "Change",
    "ColumnSpec",
    "ConfigDocument",
    "ConfigError",
    "DemoTaskSpec",
    "ProposalSpec",
    "Reference",
    "config_apply",
    "config_load",
    "config_parse",
]
