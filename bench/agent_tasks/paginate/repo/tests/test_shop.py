from shop import paginate


def test_second_page():
    assert paginate(list(range(25)), 2, 10) == list(range(10, 20))
