"""Which pages may show the dashboard in a frame: anti-framing headers on every response, so that another site
cannot lay the dashboard, invisible, under its own buttons and have a logged-in user click it (clickjacking).

The policy is a Content-Security-Policy `frame-ancestors` source list: 'self' (the default: only the dashboard's
own pages), 'none', or the origins of an intranet that embeds it. X-Frame-Options, for browsers older than CSP 2,
goes with the two lists it can express ('self': SAMEORIGIN, 'none': DENY); browsers that know frame-ancestors
ignore it.
"""

from __future__ import annotations

import re

import flask

from db.errors import DinoscopeError

DEFAULT_FRAME_ANCESTORS = "'self'"
_KEYWORDS = {"self": "'self'", "none": "'none'"}  # a shell strips the quotes of --frame-ancestors 'self'
_FRAME_OPTIONS = {"'self'": "SAMEORIGIN", "'none'": "DENY"}
# CSP 3's host-source and scheme-source: [scheme://]host[:port][/path], a host's first label may be *; or scheme:
_SOURCE = re.compile(
    r"\*|[A-Za-z][A-Za-z0-9+.-]*:"
    r"|([A-Za-z][A-Za-z0-9+.-]*://)?(\*|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:(\d{1,5}|\*))?(/[^\s;,']*)?")


class FrameAncestorsError(DinoscopeError):
    """A --frame-ancestors list that is not one; the message names the first source that is not one."""


def frame_ancestors(value: str) -> str:
    """`value` as a frame-ancestors source list (space-separated sources; self and none with or without their
    quotes); FrameAncestorsError naming the first source that is not one."""
    sources = [_KEYWORDS.get(source.strip("'"), source) for source in value.split()]
    if not sources:
        raise FrameAncestorsError("frame-ancestors is empty: give 'self', 'none' or the origins allowed to frame "
                                  "the dashboard, e.g. https://intranet.example.edu")
    for source in sources:
        if source not in _FRAME_OPTIONS and not _SOURCE.fullmatch(source):
            raise FrameAncestorsError(f"frame-ancestors: {source!r} is not a source: give 'self', 'none', a scheme "
                                      "such as https: or an origin such as https://intranet.example.edu, separated "
                                      "by spaces")
    if "'none'" in sources and len(sources) > 1:
        raise FrameAncestorsError("frame-ancestors: 'none' cannot be combined with other sources")
    return " ".join(sources)


def add_framing_headers(server: flask.Flask, ancestors: str) -> None:
    """Content-Security-Policy: frame-ancestors (and X-Frame-Options where it can say the same) on every response;
    only that directive, so nothing else the dashboard's scripts do is restricted."""
    sources = frame_ancestors(ancestors)
    policy, frame_options = f"frame-ancestors {sources}", _FRAME_OPTIONS.get(sources)

    @server.after_request
    def forbid_framing(response: flask.Response) -> flask.Response:
        response.headers["Content-Security-Policy"] = policy
        if frame_options:
            response.headers["X-Frame-Options"] = frame_options
        return response
