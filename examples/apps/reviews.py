"""Reviews service in three versions, the target of the demo's traffic split.

v1 shows no stars and calls nobody; v2 and v3 ask ratings (through the sidecar) and show
black or red stars. The answer always names its version so the caller can count the split.
"""
from __future__ import annotations

import os

from aiohttp import web

from examples.apps.common import make_app, mesh_get, parse_args, propagated, run

STAR_COLOR = {"v1": None, "v2": "black", "v3": "red"}
RATINGS_URL = "http://ratings:9080/ratings/{id}"
VERSION = web.AppKey("version", str)


async def reviews(request: web.Request) -> web.Response:
    """GET /reviews/{id} -> {"version", "reviews": [...], "error"?}."""
    app = request.app
    version = app[VERSION]
    product = request.match_info["id"]
    body: dict = {"id": product, "version": version}
    stars: dict[str, int] = {}
    if STAR_COLOR[version] is not None:
        try:
            stars = (await mesh_get(app, RATINGS_URL.format(id=product), propagated(request)))[
                "ratings"
            ]
        except Exception as exc:  # any failure of the hop: report it, still answer
            body["error"] = f"ratings unavailable: {exc!r}"
    body["reviews"] = [
        {
            "reviewer": name,
            "text": text,
            "rating": (
                {"stars": stars[name], "color": STAR_COLOR[version]} if name in stars else None
            ),
        }
        for name, text in (
            ("Reviewer1", "An extremely entertaining play by Shakespeare."),
            ("Reviewer2", "Absolutely fun and entertaining."),
        )
    ]
    return web.json_response(body)


def build(version: str, outbound: str) -> web.Application:
    if version not in STAR_COLOR:
        raise SystemExit(f"unknown reviews version {version!r}; expected one of {list(STAR_COLOR)}")
    app = make_app(outbound)
    app[VERSION] = version
    app.router.add_get("/reviews/{id}", reviews)
    return app


def main() -> None:
    def extra(parser):
        parser.add_argument(
            "--version",
            default=os.environ.get("REVIEWS_VERSION", "v1"),
            choices=sorted(STAR_COLOR),
            help="which reviews version to be (default: $REVIEWS_VERSION or v1)",
        )

    args = parse_args("Demo reviews service", needs_outbound=False, extra=extra)
    if STAR_COLOR[args.version] is not None and not args.outbound:
        raise SystemExit(f"reviews {args.version} calls ratings: --outbound is required")
    run(build(args.version, args.outbound), args.port)


if __name__ == "__main__":
    main()
