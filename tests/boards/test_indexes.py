"""A foreign key without an index of its own is covered by a composite index
that leads with it: lookups by it (and the cascades and SET NULLs of deleting
what it points to) still find their rows by an index, while every insert and
move writes one index fewer."""

from __future__ import annotations

from django.apps import apps
from django.db import models

UNINDEXED_ON_PURPOSE = {
    ("boards", "task", "board"),
    ("boards", "task", "column"),
    ("boards", "task", "agent"),
    ("boards", "taskevent", "board"),
    ("boards", "modelcall", "board"),
    ("boards", "modelcall", "agent"),
}


def _leading(model) -> set[str]:
    """The fields some index or unique constraint of ``model`` leads with."""
    firsts = {index.fields[0].lstrip("-") for index in model._meta.indexes if index.fields}
    firsts |= {
        c.fields[0] for c in model._meta.constraints if isinstance(c, models.UniqueConstraint) and c.fields
    }
    firsts |= {fields[0] for fields in model._meta.unique_together}
    return firsts


def test_every_foreign_key_is_indexed_alone_or_leads_a_composite_index():
    uncovered = []
    unindexed = set()
    for model in apps.get_app_config("boards").get_models():
        for field in model._meta.fields:
            if isinstance(field, models.ForeignKey) and not field.db_index and not field.unique:
                unindexed.add((model._meta.app_label, model._meta.model_name, field.name))
                if field.name not in _leading(model):
                    uncovered.append(f"{model.__name__}.{field.name}")
    assert uncovered == []
    assert unindexed == UNINDEXED_ON_PURPOSE
