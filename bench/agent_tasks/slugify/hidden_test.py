from textkit import slugify


def test_slugs():
    assert slugify("Hello,  World!") == "hello-world"
    assert slugify("  Já   vu -- again ") == "já-vu-again"
    assert slugify("one") == "one"
