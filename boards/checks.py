"""System checks: a registered custom agent class must import and implement the interface."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

REQUIRED_METHODS = ("process", "capabilities", "metrics")


@register()
def agent_classes_check(app_configs=None, **kwargs) -> list[Error]:
    errors = []
    for path in settings.KAIZEN_AGENT_CLASSES:
        try:
            cls = import_string(path)
        except ImportError as exc:
            errors.append(
                Error(
                    f"KAIZEN_AGENT_CLASSES names {path!r}, which cannot be imported: {exc}",
                    hint="Give the dotted path of a class, such as boards.example_agents.KeywordClassifier.",
                    id="boards.E001",
                )
            )
            continue
        missing = [name for name in REQUIRED_METHODS if not callable(getattr(cls, name, None))]
        if not isinstance(cls, type) or missing:
            errors.append(
                Error(
                    f"KAIZEN_AGENT_CLASSES names {path!r}, which is not an agent class"
                    + (f" (it lacks {', '.join(missing)})" if missing else ""),
                    hint="Subclass boards.agents.BaseAgent and implement process(task) -> Output.",
                    id="boards.E002",
                )
            )
    return errors
