"""{% term "effective batch" %}: the word with its one-line explanation on hover; |term_title: the line alone."""
from django import template
from django.urls import reverse
from django.utils.html import format_html

from guidance.glossary import explain

register = template.Library()


@register.simple_tag
def term(word: str, shown: str = "") -> str:
    """The word as the page writes it (`shown`, else `word`), explained on hover and linked to the glossary."""
    line = explain(word)
    if not line:
        return shown or word
    anchor = "term-" + word.strip().lower().replace(" ", "-")
    return format_html('<a class="term" href="{}#{}" title="{}">{}</a>', reverse("guidance_index"), anchor, line,
                       shown or word)


@register.filter
def term_title(word: str) -> str:
    return explain(str(word))
