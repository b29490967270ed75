from django.urls import path

from boards.agents import views

urlpatterns = [
    path("", views.agent_list, name="boards-agent-list"),
    path("<int:pk>/", views.agent_detail, name="boards-agent-detail"),
]
