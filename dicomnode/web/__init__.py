"""The auditor's and reviewers' web view of the log (Starlette + Jinja2, served by uvicorn).

Modules: settings (what it starts with, exposure rule), passwords (reviewer hashes), filters
(query parameters -> LogFilter), render (templates), headers (security headers), auth (who is
asking, CSRF, login), pages (read-only pages), review (queue, verdicts, review summary), export
(CSV/JSON lines), app (routes), server (uvicorn in a thread), cli (`dicomnode web`).
Importing this package imports no web framework; start it with dicomnode.web.server.
"""
