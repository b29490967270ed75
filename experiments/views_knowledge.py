"""The knowledge base's page: past work most similar to a text or a task, with
the outcome each attempt had and what its reviewer said (issue 14)."""

from __future__ import annotations

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from boards.models import Task
from experiments import knowledge, vectors
from experiments.embeddings import EmbeddingError, get_embedder
from experiments.forms import SimilarForm
from experiments.models import Pattern


@require_GET
def similar(request: HttpRequest) -> HttpResponse:
    """Search the knowledge base (every logged-in user: operators look up how
    similar work went, reviewers how it was judged)."""
    form = SimilarForm(request.GET or None)
    results: list[knowledge.Similar] = []
    task = None
    problem = ""
    if form.is_bound and form.is_valid() and form.asked:
        data = form.cleaned_data
        if data.get("task"):
            task = Task.objects.select_related("board", "agent").filter(pk=data["task"]).first()
            if task is None:
                form.add_error("task", f"There is no task {data['task']}.")
        if form.is_valid():
            try:
                results = knowledge.similar_patterns(
                    text=data.get("text") or "",
                    task=task,
                    agent_ids=[data["agent"].pk] if data.get("agent") else None,
                    verdicts=[data["verdict"]] if data.get("verdict") else None,
                    limit=data.get("limit") or 10,
                )
            except EmbeddingError as exc:
                problem = f"The embedding model could not be reached: {exc}"
    context = {
        "form": form,
        "results": results,
        "task": task,
        "problem": problem,
        "status": _status(),
        "nav": "knowledge",
    }
    return render(request, "experiments/knowledge.html", context)


def _status() -> dict:
    """What the knowledge base holds: patterns by outcome, how many have their
    vector of the current model, which model and which index."""
    embedder = get_embedder()
    counts = Pattern.objects.aggregate(
        total=Count("pk"),
        embedded=Count("pk", filter=Q(embed_model=embedder.name, vector__isnull=False)),
        **{value: Count("pk", filter=Q(verdict=value)) for value, _ in Pattern.Verdict.choices},
    )
    return {
        "counts": counts,
        "verdicts": [(value, label, counts[value]) for value, label in Pattern.Verdict.choices],
        "pending": counts["total"] - counts["embedded"],
        "model": embedder.name,
        "dim": embedder.dim,
        "backend": vectors.vector_backend(),
    }
