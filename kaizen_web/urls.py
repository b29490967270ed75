from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from boards.api import api
from kaizen_web.metrics_view import metrics_view

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="boards-list", permanent=False)),
    # Where a browser looks for the icon of a page that names none (the admin's,
    # the API's docs): the one our pages name (base.html).
    path("favicon.ico", login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=False))),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("boards/", include("boards.urls")),
    path("agents/", include("boards.agents.urls")),
    path("andon/", include("andon.urls")),
    path("kaizen/", include("experiments.urls")),
    path("metrics", metrics_view, name="metrics"),
]
