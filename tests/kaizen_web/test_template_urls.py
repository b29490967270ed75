"""``{% url %}`` remembers what it reversed (kaizen_web.template_urls), and draws
what Django's own tag draws."""

from __future__ import annotations

import sys
import types

import pytest
from django.http import HttpResponse
from django.template import engines
from django.test import override_settings
from django.urls import NoReverseMatch, path, reverse, set_script_prefix

from kaizen_web import template_urls


def render(source: str, **context) -> str:
    return engines["django"].from_string(source).render(context)


@pytest.fixture(autouse=True)
def _forget():
    template_urls._reversed.cache_clear()
    yield
    template_urls._reversed.cache_clear()
    set_script_prefix("/")


def test_every_django_template_uses_it():
    template = engines["django"].from_string("{% url 'boards-list' %}")
    assert isinstance(template.template.nodelist[0], template_urls.RememberedURLNode)


def test_it_draws_what_reverse_gives_for_arguments_by_position_and_by_name():
    assert render("{% url 'boards-list' %}") == reverse("boards-list")
    assert render("{% url 'boards-detail' 'line' %}") == reverse("boards-detail", args=["line"])
    assert render("{% url 'boards-detail' slug=s %}", s="line") == reverse(
        "boards-detail", kwargs={"slug": "line"}
    )
    assert render("{% url 'boards-detail' slug='line' as u %}[{{ u }}]") == "[/boards/line/]"


def test_the_second_drawing_is_remembered():
    render("{% url 'boards-detail' 'line' %}")
    before = template_urls._reversed.cache_info()
    assert render("{% url 'boards-detail' 'line' %}") == "/boards/line/"
    after = template_urls._reversed.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


def test_a_missing_view_fails_as_django_fails_and_as_var_gives_nothing():
    with pytest.raises(NoReverseMatch):
        render("{% url 'no-such-view' %}")
    assert render("{% url 'no-such-view' as u %}[{{ u }}]") == "[]"


def test_a_new_script_prefix_is_not_served_an_old_url():
    assert render("{% url 'boards-list' %}") == "/boards/"
    set_script_prefix("/kaizen/")
    assert render("{% url 'boards-list' %}") == "/kaizen/boards/"


def test_another_urlconf_is_not_served_an_old_url():
    assert render("{% url 'boards-list' %}") == "/boards/"
    urlconf = types.ModuleType("kaizen_test_other_urls")
    urlconf.urlpatterns = [path("elsewhere/", lambda request: HttpResponse(), name="boards-list")]
    sys.modules[urlconf.__name__] = urlconf
    try:
        with override_settings(ROOT_URLCONF=urlconf.__name__):
            assert render("{% url 'boards-list' %}") == "/elsewhere/"
    finally:
        del sys.modules[urlconf.__name__]


def test_an_argument_that_is_not_a_plain_value_is_reversed_each_time():
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def __str__(self) -> str:
            return self.name

        def __hash__(self) -> int:  # equal and alike hashed, as a model instance by its pk
            return 1

        def __eq__(self, other) -> bool:
            return isinstance(other, Named)

    board = Named("before")
    assert render("{% url 'boards-detail' b %}", b=board) == "/boards/before/"
    board.name = "after"
    assert render("{% url 'boards-detail' b %}", b=board) == "/boards/after/"
