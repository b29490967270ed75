"""``{% url %}`` that remembers what it reversed: a builtin of the Django
templates (settings.TEMPLATES), so it is the url tag of every one of them.

Why: the board page draws some two dozen URLs, and reversing one costs some
70 µs in the web server. Django's ``reverse`` reads the active language, the
script prefix and the URLconf, each from an ``asgiref.local.Local`` (slow in
the ASGI server's threads), and then fills the pattern in. That was about a
third of the CPU a load of the board page cost (py-spy on bench/board_page.py).

A URL depends only on the URLconf, the script prefix, the view's name, its
arguments and the current app; those are the key. The language is not: no
route here is translated (no ``i18n_patterns``, no lazy text in a route).
Arguments other than plain strings and integers (a model instance, whose
``str()`` goes into the URL and may change; a bool or an enum member, equal to
a plain value that reverses to another text) are reversed each time.
tests/kaizen_web/test_template_urls.py checks that no route is translated, and
that the tag draws what Django's own ``URLNode`` (whose render is copied below)
draws.
"""

from __future__ import annotations

from functools import lru_cache

from django import template
from django.template import defaulttags
from django.urls import NoReverseMatch, get_resolver, get_script_prefix, get_urlconf, reverse
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString

register = template.Library()

# Enough for the URLs of every page a busy site draws; past it, the least
# recently drawn ones are reversed again.
REMEMBERED = 4096


@lru_cache(maxsize=REMEMBERED)
def _reversed(resolver, prefix: str, view_name: str, args: tuple, kwargs: tuple, current_app) -> str:
    # The resolver (one per URLconf, new after clear_url_caches) and the
    # prefix are in the key so that a change of either is a new entry.
    return reverse(
        view_name, urlconf=resolver.urlconf_name, args=args, kwargs=dict(kwargs), current_app=current_app
    )


# Exactly these types: a bool equals 1 and an enum member its value, but each
# reverses to its own text. A template's literal is a SafeString.
_PLAIN = frozenset({str, SafeString, int})


def _plain(values) -> bool:
    return all(type(value) in _PLAIN for value in values)


def reverse_remembered(view_name: str, *, args=(), kwargs=None, current_app=None) -> str:
    """``django.urls.reverse``, remembered for plain arguments."""
    kwargs = kwargs or {}
    if not (isinstance(view_name, str) and _plain(args) and _plain(kwargs.values())):
        return reverse(view_name, args=args, kwargs=kwargs, current_app=current_app)
    return _reversed(
        get_resolver(get_urlconf()),
        get_script_prefix(),
        view_name,
        tuple(args),
        tuple(sorted(kwargs.items())),
        current_app,
    )


class RememberedURLNode(defaulttags.URLNode):
    def render(self, context) -> str:
        # Django's URLNode.render, reversing through reverse_remembered.
        args = [arg.resolve(context) for arg in self.args]
        kwargs = {k: v.resolve(context) for k, v in self.kwargs.items()}
        view_name = self.view_name.resolve(context)
        try:
            current_app = context.request.current_app
        except AttributeError:
            try:
                current_app = context.request.resolver_match.namespace
            except AttributeError:
                current_app = None
        url = ""
        try:
            url = reverse_remembered(view_name, args=args, kwargs=kwargs, current_app=current_app)
        except NoReverseMatch:
            if self.asvar is None:
                raise
        if self.asvar:
            context[self.asvar] = url
            return ""
        return conditional_escape(url) if context.autoescape else url


@register.tag
def url(parser, token) -> RememberedURLNode:
    """Django's ``{% url %}``, parsed as Django parses it."""
    node = defaulttags.url(parser, token)
    return RememberedURLNode(node.view_name, node.args, node.kwargs, node.asvar)
