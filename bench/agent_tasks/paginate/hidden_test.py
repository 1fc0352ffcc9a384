from shop import paginate


def test_pages():
    items = list(range(25))
    assert paginate(items, 1, 10) == list(range(10))
    assert paginate(items, 3, 10) == list(range(20, 25))
    assert paginate(items, 4, 10) == []
