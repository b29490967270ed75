from django.urls import path

from experiments import views, views_knowledge

urlpatterns = [
    path("", views.review, name="experiments-review"),
    path("live/", views.review_live, name="experiments-review-live"),
    path("audit/", views.audit, name="experiments-audit"),
    path("knowledge/", views_knowledge.similar, name="experiments-knowledge"),
    path("plotly.min.js", views.plotly_js, name="experiments-plotly-js"),
    path("proposals/<int:pk>/", views.proposal_detail, name="experiments-proposal"),
    path("proposals/<int:pk>/live/", views.proposal_live, name="experiments-proposal-live"),
    path("proposals/<int:pk>/approve/", views.proposal_approve, name="experiments-proposal-approve"),
    path("proposals/<int:pk>/reject/", views.proposal_reject, name="experiments-proposal-reject"),
    path("experiments/<int:pk>/", views.experiment_detail, name="experiments-detail"),
    path("experiments/<int:pk>/live/", views.experiment_live, name="experiments-detail-live"),
    path("experiments/<int:pk>/advance/", views.experiment_advance, name="experiments-advance"),
    path("experiments/<int:pk>/promote/", views.experiment_promote, name="experiments-promote"),
    path("experiments/<int:pk>/rollback/", views.experiment_rollback, name="experiments-rollback"),
    path("experiments/<int:pk>/resume/", views.experiment_resume, name="experiments-resume"),
    path("replays/<int:pk>/", views.replay_detail, name="experiments-replay"),
    path("replays/<int:pk>/live/", views.replay_live, name="experiments-replay-live"),
    path("replays/<int:pk>/cancel/", views.replay_cancel, name="experiments-replay-cancel"),
    path("gates/<int:pk>/override/", views.gate_override, name="experiments-gate-override"),
]
