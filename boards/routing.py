from django.urls import path

from boards.consumers import BoardConsumer

websocket_urlpatterns = [
    path("ws/boards/<slug:slug>/", BoardConsumer.as_asgi()),
]
