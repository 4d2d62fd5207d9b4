"""The auditor's and reviewers' web view of the log (Starlette + Jinja2, served by uvicorn).

Modules: settings (what it starts with, exposure rule), passwords (reviewer hashes), filters
(query parameters -> LogFilter), render (templates), headers (security headers), csrf (the
POSTs' tokens), sessions (signed sessions: revocation, idle limit), throttle (failed logins),
auth (who is asking, login, logout), access (who saw which rows), errors (500s, logged without
patient data), charts (summary bar geometry), pages (read-only pages), review (queue, verdicts,
review summary), export (CSV/JSON lines), app (routes), server (uvicorn in a thread), cli
(`dicomnode web`). Importing this package imports no web framework; start it with
dicomnode.web.server.
"""
