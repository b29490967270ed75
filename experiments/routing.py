from django.urls import path

from experiments.consumers import ReviewConsumer

websocket_urlpatterns = [
    path("ws/kaizen/", ReviewConsumer.as_asgi()),
]
