from django.urls import path

from andon import views, views_budgets, views_thresholds

urlpatterns = [
    path("", views.inbox, name="andon-inbox"),
    path("live/", views.inbox_live, name="andon-inbox-live"),
    path("<int:pk>/", views.escalation_detail, name="andon-escalation"),
    path("<int:pk>/claim/", views.escalation_claim, name="andon-escalation-claim"),
    path("<int:pk>/approve/", views.escalation_approve, name="andon-escalation-approve"),
    path("<int:pk>/correct/", views.escalation_correct, name="andon-escalation-correct"),
    path("<int:pk>/reject/", views.escalation_reject, name="andon-escalation-reject"),
    path("stops/", views.line_stops, name="andon-line-stops"),
    path("stops/<int:pk>/restart/", views.line_restart, name="andon-line-restart"),
    path("cord/", views.cord, name="andon-cord"),
    path("budgets/", views_budgets.budgets, name="andon-budgets"),
    path("budgets/<int:pk>/", views_budgets.budget_detail, name="andon-budget"),
    path("budgets/<int:pk>/delete/", views_budgets.budget_delete, name="andon-budget-delete"),
    path("thresholds/", views_thresholds.thresholds, name="andon-thresholds"),
    path("thresholds/<int:pk>/", views_thresholds.threshold_detail, name="andon-threshold"),
    path("thresholds/<int:pk>/delete/", views_thresholds.threshold_delete, name="andon-threshold-delete"),
    path("alerts/<int:pk>/acknowledge/", views_budgets.alert_acknowledge, name="andon-alert-acknowledge"),
]
