"""Headless Chromium (Debian's package) as the web-view tests drive it through Playwright."""

CHROMIUM = "/usr/bin/chromium"
# no sandbox (CI runs as root), and nothing that would reach out of the test's network namespace
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
