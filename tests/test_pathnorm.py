"""Path normalisation (``meshproxy/_core/pathnorm.py``), both builds: Istio's pathNormalization
modes as Envoy implements them (fragment stripping, escaped slashes, ``normalize_path``, merge
slashes), the fast check, and the codec hook (routing and the upstream see the normalised path)."""
import importlib
import os

import pytest

NONE, BASE, MERGE, DECODE = 0, 1, 2, 3


@pytest.fixture(params=["py", "c"])
def pn(request):
    if request.param == "c" and os.environ.get("MESHPROXY_NO_EXTENSIONS"):
        pytest.skip("MESHPROXY_NO_EXTENSIONS is set: compiled build not tested")
    pkg = "meshproxy._core" if request.param == "c" else "meshproxy._py"
    mod = importlib.import_module(f"{pkg}.pathnorm")
    assert mod.__file__.endswith(".so" if request.param == "c" else ".py"), mod.__file__
    return mod


# path -> (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES); None = rejected (400)
TABLE = [
    (b"/", b"/", b"/", b"/", b"/"),
    (b"/a/b/c.html", b"/a/b/c.html", b"/a/b/c.html", b"/a/b/c.html", b"/a/b/c.html"),
    # RFC 3986 dot segments (CVE-2019-9901)
    (b"/a/./b", b"/a/./b", b"/a/b", b"/a/b", b"/a/b"),
    (b"/a/../b", b"/a/../b", b"/b", b"/b", b"/b"),
    (b"/../a", b"/../a", b"/a", b"/a", b"/a"),
    (b"/../../a/../../b", b"/../../a/../../b", b"/b", b"/b", b"/b"),
    (b"/a/b/..", b"/a/b/..", b"/a/", b"/a/", b"/a/"),
    (b"/a/b/.", b"/a/b/.", b"/a/b/", b"/a/b/", b"/a/b/"),
    (b"/..", b"/..", b"/", b"/", b"/"),
    (b"/public/../admin", b"/public/../admin", b"/admin", b"/admin", b"/admin"),
    # %2e is a dot (either case), wherever it stands in a segment
    (b"/a/%2e%2e/b", b"/a/%2e%2e/b", b"/b", b"/b", b"/b"),
    (b"/a/%2E%2E/b", b"/a/%2E%2E/b", b"/b", b"/b", b"/b"),
    (b"/a/.%2e/b", b"/a/.%2e/b", b"/b", b"/b", b"/b"),
    (b"/%2E/", b"/%2E/", b"/", b"/", b"/"),
    (b"/public/%2e%2e/admin", b"/public/%2e%2e/admin", b"/admin", b"/admin", b"/admin"),
    # dots that are part of a name stay
    (b"/a/.b/..c/c..", b"/a/.b/..c/c..", b"/a/.b/..c/c..", b"/a/.b/..c/c..", b"/a/.b/..c/c.."),
    (b"/a/...", b"/a/...", b"/a/...", b"/a/...", b"/a/..."),
    # backslashes are slashes from BASE on
    (b"\\a\\b", b"\\a\\b", b"/a/b", b"/a/b", b"/a/b"),
    (b"/a\\..\\b", b"/a\\..\\b", b"/b", b"/b", b"/b"),
    # merged slashes (CVE-2021-31920)
    (b"/a//b", b"/a//b", b"/a//b", b"/a/b", b"/a/b"),
    (b"//a///b//", b"//a///b//", b"//a///b//", b"/a/b/", b"/a/b/"),
    (b"/a/.//b", b"/a/.//b", b"/a//b", b"/a/b", b"/a/b"),
    # escaped slashes and backslashes: decoded only by DECODE_AND_MERGE_SLASHES
    (b"/a%2Fb", b"/a%2Fb", b"/a%2Fb", b"/a%2Fb", b"/a/b"),
    (b"/a%2fb", b"/a%2fb", b"/a%2fb", b"/a%2fb", b"/a/b"),
    (b"/a%5cb", b"/a%5cb", b"/a%5cb", b"/a%5cb", b"/a/b"),
    (b"/a%5C%5Cb", b"/a%5C%5Cb", b"/a%5C%5Cb", b"/a%5C%5Cb", b"/a/b"),
    (b"/public/..%2fadmin", b"/public/..%2fadmin", b"/public/..%2fadmin", b"/public/..%2fadmin",
     b"/admin"),
    (b"/public%2f..%2fadmin", b"/public%2f..%2fadmin", b"/public%2f..%2fadmin",
     b"/public%2f..%2fadmin", b"/admin"),
    # escaped unreserved characters are decoded; other escapes kept exactly, hex case included
    (b"/%41%7a%30%2D%5f%7E", b"/%41%7a%30%2D%5f%7E", b"/Az0-_~", b"/Az0-_~", b"/Az0-_~"),
    (b"/a%20b%3a%3F%25", b"/a%20b%3a%3F%25", b"/a%20b%3a%3F%25", b"/a%20b%3a%3F%25",
     b"/a%20b%3a%3F%25"),
    # not an escape: kept; nested escapes cannot turn into one
    (b"/100%", b"/100%", b"/100%", b"/100%", b"/100%"),
    (b"/%zz%4", b"/%zz%4", b"/%zz%4", b"/%zz%4", b"/%zz%4"),
    (b"/%%300", b"/%%300", b"/%2500", b"/%2500", b"/%2500"),
    (b"/%3%30", b"/%3%30", b"/%2530", b"/%2530", b"/%2530"),
    # characters a path may not carry literally are escaped (as Envoy's canonicaliser does)
    (b'/a"<>^`{|}', b'/a"<>^`{|}', b"/a%22%3C%3E%5E%60%7B%7C%7D", b"/a%22%3C%3E%5E%60%7B%7C%7D",
     b"/a%22%3C%3E%5E%60%7B%7C%7D"),
    # an escaped NUL cannot be normalised: 400
    (b"/a%00b", b"/a%00b", None, None, None),
    # fragments are stripped in every mode (CVE-2021-39156)
    (b"/a#frag", b"/a", b"/a", b"/a", b"/a"),
    (b"/public#/../admin", b"/public", b"/public", b"/public", b"/public"),
    (b"/a/../b?x=1#f", b"/a/../b?x=1", b"/b?x=1", b"/b?x=1", b"/b?x=1"),
    # the query string is never touched
    (b"/a/../b?x=/../y//z%2F%41\\", b"/a/../b?x=/../y//z%2F%41\\", b"/b?x=/../y//z%2F%41\\",
     b"/b?x=/../y//z%2F%41\\", b"/b?x=/../y//z%2F%41\\"),
    (b"/p?q=%20&r=..", b"/p?q=%20&r=..", b"/p?q=%20&r=..", b"/p?q=%20&r=..", b"/p?q=%20&r=.."),
    (b"/a//b?c//d", b"/a//b?c//d", b"/a//b?c//d", b"/a/b?c//d", b"/a/b?c//d"),
    # not a path: left alone
    (b"*", b"*", b"*", b"*", b"*"),
    (b"example.com:443", b"example.com:443", b"example.com:443", b"example.com:443",
     b"example.com:443"),
]


@pytest.mark.parametrize("row", TABLE, ids=[r[0].decode("latin-1") for r in TABLE])
def test_normalize_table(pn, row):
    path, *want = row
    for mode, expected in zip((NONE, BASE, MERGE, DECODE), want):
        got = pn.normalize(path, mode)
        assert got == expected, (pn.NAMES[mode], path, got, expected)
        if expected == path:
            assert got is path, "an unchanged path is returned as it is (no copy)"


@pytest.mark.parametrize("row", TABLE, ids=[r[0].decode("latin-1") for r in TABLE])
def test_fast_check_agrees(pn, row):
    # needs_normalizing may say yes for a path that turns out unchanged, never no for one that
    # changes; the compiled C scan and the twin's ``in`` checks must both hold to that.
    path, *want = row
    for mode, expected in zip((NONE, BASE, MERGE, DECODE), want):
        if expected != path:
            assert pn.needs_normalizing(path, mode), (pn.NAMES[mode], path)
            assert pn._scan(path, mode), (pn.NAMES[mode], path)


@pytest.mark.parametrize("path", [b"/", b"/api/v1/users/123/profile", b"/index.html",
                                  b"/a-b_c~d/e.f?x=1&y=%20/../", b"/static/app.min.js?v=1.2.3"])
def test_ordinary_paths_take_the_fast_path(pn, path):
    for mode in (NONE, BASE, MERGE, DECODE):
        if b"?" not in path:  # (the twin's ``in`` checks also look at the query)
            assert not pn.needs_normalizing(path, mode)
        assert not pn._scan(path, mode)
        assert pn.normalize(path, mode) is path


def test_normalize_is_idempotent(pn):
    for path, *want in TABLE:
        for mode, once in zip((NONE, BASE, MERGE, DECODE), want):
            if once is not None and mode != DECODE:  # decoding %2F twice is not idempotent
                assert pn.normalize(once, mode) == once, (pn.NAMES[mode], path, once)


def test_modes_by_name(pn):
    assert pn.MODES == {"NONE": 0, "BASE": 1, "MERGE_SLASHES": 2, "DECODE_AND_MERGE_SLASHES": 3,
                        "DEFAULT": 1}
    assert [pn.MODES[n] for n in pn.NAMES] == [0, 1, 2, 3]
