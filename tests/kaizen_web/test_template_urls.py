"""``{% url %}`` remembers what it reversed (kaizen_web.template_urls), and draws
what Django's own tag draws."""

from __future__ import annotations

import enum
import sys
import types

import pytest
from django.http import HttpResponse
from django.template import Context, defaulttags, engines
from django.test import override_settings
from django.urls import (
    LocalePrefixPattern,
    NoReverseMatch,
    URLResolver,
    get_resolver,
    path,
    reverse,
    set_script_prefix,
)
from django.utils.functional import Promise

from kaizen_web import template_urls


def render(source: str, **context) -> str:
    return engines["django"].from_string(source).render(context)


@pytest.fixture(autouse=True)
def _forget():
    template_urls._reversed.cache_clear()
    set_script_prefix("/")
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


def test_a_bool_or_an_enum_member_is_not_served_the_url_of_the_value_it_equals():
    class Slug(str, enum.Enum):  # noqa: UP042 (not StrEnum: its str() is "Slug.LINE", not "line")
        LINE = "line"

    assert render("{% url 'boards-muda-csv' 'a' n %}", n=1) == "/boards/a/muda/1.csv"
    assert render("{% url 'boards-muda-csv' 'a' n %}", n=True) == "/boards/a/muda/True.csv"
    assert render("{% url 'boards-detail' s %}", s="line") == "/boards/line/"
    # str() of the member is "Slug.LINE", no slug: Django refuses it, and so does the tag.
    with pytest.raises(NoReverseMatch):
        reverse("boards-detail", args=[Slug.LINE])
    with pytest.raises(NoReverseMatch):
        render("{% url 'boards-detail' s %}", s=Slug.LINE)


def _patterns(resolver: URLResolver):
    for pattern in resolver.url_patterns:
        yield pattern
        if isinstance(pattern, URLResolver):
            yield from _patterns(pattern)


def test_no_route_is_translated_so_the_language_need_not_be_in_the_key():
    # If one ever is (i18n_patterns, or lazy text in a route), the tag must key
    # its URLs by the active language too.
    for pattern in _patterns(get_resolver()):
        route = pattern.pattern
        assert not isinstance(route, LocalePrefixPattern), pattern
        assert not isinstance(getattr(route, "_route", None), Promise), pattern
        assert not isinstance(getattr(route, "_regex", None), Promise), pattern


@pytest.mark.parametrize(
    "source",
    [
        "{% url 'boards-list' %}",
        "{% url 'boards-detail' 'line' %}",
        "{% url 'boards-detail' slug=s %}",
        "{% url 'boards-task-detail' s n %}",
        "{% url 'boards-detail' slug='line' as u %}[{{ u }}]",
        "{% url 'no-such-view' as u %}[{{ u }}]",
        "{% autoescape off %}{% url 'boards-list' %}?a=1&b=2{% endautoescape %}",
        "{% url 'admin:index' %}",
    ],
)
def test_it_draws_what_djangos_own_tag_draws(source):
    # RememberedURLNode.render is Django's URLNode.render with another reverse:
    # drawn side by side with Django's own node, twice (the second from memory).
    template = engines["django"].from_string(source).template
    ours = template.render(Context({"s": "line", "n": 7}))
    for node in template.nodelist.get_nodes_by_type(template_urls.RememberedURLNode):
        node.__class__ = defaulttags.URLNode
    try:
        djangos = template.render(Context({"s": "line", "n": 7}))
    finally:
        for node in template.nodelist.get_nodes_by_type(defaulttags.URLNode):
            node.__class__ = template_urls.RememberedURLNode
    assert ours == djangos != ""
    assert template.render(Context({"s": "line", "n": 7})) == djangos
