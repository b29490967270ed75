"""Every change to the line goes through these functions.

Each one validates, writes inside a transaction, records a TaskEvent, and
schedules the live update (and the next pull) for after commit. Views, the API,
consumers, admin actions and Celery tasks only call them, by the names below.

One module a subject:

- ``primitives``: the blocks changes are made of (the board lock, WIP checks,
  placing a task, its events, returning a task after a failed or lost run),
  which the reviewers' services (``andon.services``) use too;
- ``pull``: what asks for a pull, and the pull itself (agents claim from Ready);
- ``enqueue``: the one place work is sent to the workers;
- ``intake``: tasks coming in, one by one, imported, or from a demo feed;
- ``runs``: a run begun and its outcome (completed, failed, deferred);
- ``ledger``: the model calls a run made and the task's totals;
- ``leases``: runs lost with their worker, and their tasks taken back;
- ``moves``: what people do on the board (moves, blocks, pauses);
- ``flow_fold``: the board's finished hours summed into the flow rollups;
- ``agent_settings`` and ``api_tokens``.

Only ``enqueue`` reaches ``boards.tasks`` (and, behind it, the runtime): it
imports each Celery task inside the function that sends it, Celery's own idiom
and the one import inside a function the services keep.
"""

from django.core.exceptions import ValidationError  # what the services raise, caught from here too

from boards.selectors import column_neighbour_get as column_neighbour  # the old name, for callers
from boards.services.agent_settings import PROMPT_FIELDS, agent_save
from boards.services.api_tokens import api_token_authenticate, api_token_create
from boards.services.enqueue import Claim
from boards.services.flow_fold import boards_flow_fold, flow_fold, flow_fold_rebuild
from boards.services.intake import (
    IMPORT_BATCH,
    TasksImportRefused,
    demo_boards_feed,
    demo_task_feed,
    task_create,
    tasks_import,
)
from boards.services.leases import leases_reap, leases_release_worker, leases_renew
from boards.services.moves import (
    MANUAL_MOVES,
    EscalationOpen,
    MoveNotAllowed,
    agent_set_paused,
    board_config_changed,
    board_set_paused,
    task_block,
    task_move,
    task_step,
    task_unblock,
)
from boards.services.primitives import (
    POSITION_GAP,
    STATUS_FOR_ROLE,
    ColumnMissing,
    WipLimitReached,
    board_lock,
    column_required,
    task_event,
    task_place,
    task_return_or_fail,
)
from boards.services.pull import (
    board_changed_on_commit,
    board_pull,
    boards_changed_on_commit,
    boards_pull_all,
    in_worker_process,
    mark_worker_process,
    mark_worker_stopping,
    pull_request_serve,
    pull_requested_run,
    request_pull,
)
from boards.services.runs import (
    RunResult,
    task_attempt_fail,
    task_complete,
    task_run_begin,
    task_run_defer,
    tasks_complete,
    tasks_run_begin,
)
from boards.text import MAX_INPUT, MAX_PRIORITY, MAX_TITLE, MIN_PRIORITY, input_key, task_fields_errors

__all__ = [
    "IMPORT_BATCH",
    "MANUAL_MOVES",
    "MAX_INPUT",
    "MAX_PRIORITY",
    "MAX_TITLE",
    "MIN_PRIORITY",
    "POSITION_GAP",
    "PROMPT_FIELDS",
    "STATUS_FOR_ROLE",
    "Claim",
    "ColumnMissing",
    "EscalationOpen",
    "MoveNotAllowed",
    "RunResult",
    "TasksImportRefused",
    "ValidationError",
    "WipLimitReached",
    "agent_save",
    "agent_set_paused",
    "api_token_authenticate",
    "api_token_create",
    "board_changed_on_commit",
    "boards_changed_on_commit",
    "board_config_changed",
    "board_lock",
    "board_pull",
    "board_set_paused",
    "boards_flow_fold",
    "boards_pull_all",
    "column_neighbour",
    "column_required",
    "demo_boards_feed",
    "demo_task_feed",
    "flow_fold",
    "flow_fold_rebuild",
    "in_worker_process",
    "input_key",
    "leases_reap",
    "leases_release_worker",
    "leases_renew",
    "mark_worker_process",
    "mark_worker_stopping",
    "pull_request_serve",
    "pull_requested_run",
    "request_pull",
    "task_attempt_fail",
    "task_block",
    "task_complete",
    "task_create",
    "task_event",
    "task_fields_errors",
    "task_move",
    "task_place",
    "task_return_or_fail",
    "task_run_begin",
    "task_run_defer",
    "task_step",
    "task_unblock",
    "tasks_complete",
    "tasks_import",
    "tasks_run_begin",
]
