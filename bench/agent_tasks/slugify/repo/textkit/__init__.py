"""Text helpers."""

import re


def slugify(title):
    """A URL slug: lower case words joined by single dashes."""
    return re.sub(r"\s", "-", title.lower())
