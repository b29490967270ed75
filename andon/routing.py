from django.urls import path

from andon.consumers import InboxConsumer

websocket_urlpatterns = [
    path("ws/andon/", InboxConsumer.as_asgi()),
]
