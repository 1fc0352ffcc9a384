"""A tiny catalogue with paging."""


def paginate(items, page, size=10):
    """Items on page `page` (1-based) when showing `size` per page."""
    start = page * size
    return items[start : start + size]
