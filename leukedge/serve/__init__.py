"""The live page of `leukedge run --serve`: the annotated stream, counts, speed, controls.

A small web server (Starlette on uvicorn, the ``[serve]`` extra) in a thread of
the run's own process reads the run's :class:`~leukedge.runtime.live.LiveFeed`.
The page is one HTML file with its script inline: no build step, no CDN, so it
works on a microscope PC without internet.
"""

from leukedge.serve.bind import Bind, parse_bind

__all__ = ["Bind", "parse_bind"]
