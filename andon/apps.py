from django.apps import AppConfig


class AndonConfig(AppConfig):
    name = "andon"
    verbose_name = "Andon"
