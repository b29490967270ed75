from django.contrib import admin

from boards.models import Agent, ApiToken, Board, Column, Task, TaskEvent


class ColumnInline(admin.TabularInline):
    model = Column
    extra = 0
    fields = ["position", "name", "role", "wip_limit", "hard_limit"]
    ordering = ["position"]


@admin.register(Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "paused", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [ColumnInline]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "provider", "model", "concurrency", "paused"]
    list_filter = ["provider", "paused", "boards"]
    filter_horizontal = ["boards"]


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "from_status", "to_status", "actor", "agent", "user", "note"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    # Tasks change state through the board and the services, which record every
    # move; the admin only shows them, so no edit here can bypass WIP limits.
    list_display = ["title", "board", "status", "agent", "priority", "attempts", "created_at"]
    list_filter = ["board", "status", "agent"]
    search_fields = ["title", "input"]
    inlines = [TaskEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        # Tokens are made with `manage.py create_api_token`, which shows the key once.
        return False
