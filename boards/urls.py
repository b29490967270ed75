from django.urls import path

from andon import views_muda
from boards import views, views_flow, views_tasks

urlpatterns = [
    path("", views.board_list, name="boards-list"),
    path("<slug:slug>/", views.board_detail, name="boards-detail"),
    path("<slug:slug>/body/", views.board_body, name="boards-body"),
    path("<slug:slug>/cord/", views.board_cord, name="boards-cord"),
    path("<slug:slug>/flow/", views_flow.board_flow, name="boards-flow"),
    path("<slug:slug>/muda/", views_muda.board_muda, name="boards-muda"),
    path("<slug:slug>/muda/<str:name>.csv", views_muda.board_muda_csv, name="boards-muda-csv"),
    path("<slug:slug>/tasks/new/", views.task_create, name="boards-task-create"),
    # The task list, its CSV export and import (boards/views_tasks.py).
    path("<slug:slug>/tasks/", views_tasks.task_list_view, name="boards-task-list"),
    path("<slug:slug>/tasks/export.csv", views_tasks.task_export, name="boards-task-export"),
    path("<slug:slug>/tasks/import/", views_tasks.task_import, name="boards-task-import"),
    path("<slug:slug>/tasks/<int:pk>/", views.task_detail, name="boards-task-detail"),
    path("<slug:slug>/tasks/<int:pk>/move/", views.task_move, name="boards-task-move"),
    path("<slug:slug>/tasks/<int:pk>/step/", views.task_step, name="boards-task-step"),
    path("<slug:slug>/tasks/<int:pk>/block/", views.task_block, name="boards-task-block"),
    path("<slug:slug>/tasks/<int:pk>/unblock/", views.task_unblock, name="boards-task-unblock"),
]
