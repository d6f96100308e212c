"""The inspection page: plain HTML, JS and CSS from the package folder `pitscope/web/`, served
with a Content-Security-Policy that forbids every other origin (it works without internet)."""

from importlib import resources

WEB_DIR = resources.files("pitscope") / "web"  # the inspection page: index.html, app.js, style.css
# The page and its assets come from this service alone; images shown are data: or blob: URLs.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def add_page_routes(app) -> None:
    """GET / (the page), /static/ (its assets) and /favicon.ico (empty) on `app`, all open."""
    from fastapi.responses import Response
    from starlette.staticfiles import StaticFiles

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        """No icon: an empty answer, so browsers stop asking and logs hold no 404."""
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        """The inspection page (its calls to /model, /predict and /threshold carry the key)."""
        return Response(
            (WEB_DIR / "index.html").read_bytes(),
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": PAGE_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
