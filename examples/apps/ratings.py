"""Ratings service: fixed star ratings per product, the leaf of the call graph."""
from __future__ import annotations

from aiohttp import web

from examples.apps.common import make_app, parse_args, run

# Two reviewers, as in bookinfo; the numbers are arbitrary but stable so the page and the
# tests can show them.
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


async def ratings(request: web.Request) -> web.Response:
    """GET /ratings/{id} -> {"id": ..., "ratings": {reviewer: stars}}."""
    return web.json_response({"id": request.match_info["id"], "ratings": RATINGS})


def build() -> web.Application:
    app = make_app(outbound="")  # calls nobody
    app.router.add_get("/ratings/{id}", ratings)
    return app


def main() -> None:
    args = parse_args("Demo ratings service", needs_outbound=False)
    run(build(), args.port)


if __name__ == "__main__":
    main()
