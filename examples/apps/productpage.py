"""Product page: the demo's entry point. It asks reviews (through its sidecar) and shows
which reviews version answered and the rating that version came with.

GET /                -> a small HTML page (open it in a browser, reload to see the split)
GET /api/productpage -> {"reviews_version": "v2", "rating": 5, "stars": "black"}
                        or 502 {"error": ...} when the reviews hop failed
"""
from __future__ import annotations

import html

from aiohttp import web

from examples.apps.common import make_app, mesh_get, parse_args, propagated, run

REVIEWS_URL = "http://reviews:9080/reviews/0"


async def fetch_reviews(request: web.Request) -> dict:
    """Call reviews and boil the answer down to what the page and the demo driver show."""
    reviews = await mesh_get(request.app, REVIEWS_URL, propagated(request))
    first = next((r["rating"] for r in reviews.get("reviews", []) if r.get("rating")), None)
    summary = {
        "reviews_version": reviews.get("version"),
        "rating": first["stars"] if first else None,
        "stars": first["color"] if first else None,
    }
    if "error" in reviews:  # reviews answered, but its own ratings hop failed
        summary["error"] = reviews["error"]
    return summary


async def api(request: web.Request) -> web.Response:
    try:
        summary = await fetch_reviews(request)
    except Exception as exc:
        return web.json_response({"error": f"reviews unavailable: {exc!r}"}, status=502)
    return web.json_response(summary)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Remora demo: productpage</title>
<style>body{{font-family:sans-serif;margin:2em}} .black{{color:#000}} .red{{color:#c00}}</style>
</head><body>
<h1>The Comedy of Errors</h1>
<p>Reviews served by <b>reviews {version}</b>.</p>
<p>{rating}</p>
<p><small>Reload to see the split; send header <code>end-user: jason</code> to always get v2.</small></p>
</body></html>
"""


async def page(request: web.Request) -> web.Response:
    try:
        summary = await fetch_reviews(request)
    except Exception as exc:
        body = PAGE.format(version="(none)", rating=html.escape(f"reviews unavailable: {exc!r}"))
        return web.Response(text=body, content_type="text/html", status=502)
    if summary["rating"] is None:
        rating = html.escape(summary.get("error", "no ratings in this version"))
    else:
        stars = "\u2605" * summary["rating"]
        rating = f'Rating: <span class="{summary["stars"]}">{stars}</span> ({summary["stars"]} stars)'
    body = PAGE.format(version=html.escape(str(summary["reviews_version"])), rating=rating)
    return web.Response(text=body, content_type="text/html")


def build(outbound: str) -> web.Application:
    app = make_app(outbound)
    app.router.add_get("/", page)
    app.router.add_get("/api/productpage", api)
    return app


def main() -> None:
    args = parse_args("Demo product page", needs_outbound=True)
    run(build(args.outbound), args.port)


if __name__ == "__main__":
    main()
