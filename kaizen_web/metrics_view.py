"""``GET /metrics``: the Prometheus text exposition of every Kaizen process (see
kaizen_web/metrics.py). Scrapers do not log in: the view is exempt from the
login-required middleware and guarded by KAIZEN_METRICS_TOKEN and/or
KAIZEN_METRICS_ALLOW instead."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from boards.metrics import LineCollector
from kaizen_web import metrics


@login_not_required
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = metrics.scrape_refusal(
        token=settings.KAIZEN_METRICS_TOKEN,
        allow=settings.KAIZEN_METRICS_ALLOW,
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        authorization=request.headers.get("Authorization", ""),
    )
    if refusal is not None:
        response = HttpResponse(
            refusal.message, status=refusal.status, content_type="text/plain; charset=utf-8"
        )
        if refusal.challenge:
            response["WWW-Authenticate"] = 'Bearer realm="kaizen-metrics"'
        return response
    # The classic text format (0.0.4), which every Prometheus 2 and 3 reads: our
    # names are all plain [a-z_] ones, so the 1.0.0 format's escaping adds nothing.
    response = HttpResponse(metrics.scrape([LineCollector()]), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
