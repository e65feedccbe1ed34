"""voicecore over HTTP, served by `voicecore serve` in the agent's own process (docs/web.md).

app.py      routes, JSON errors, the server itself
auth.py     who may ask for tokens: shared key, same-origin, per-client rate limit
details.py  POST /api/connection-details: request validation, room and token
health.py   what /readyz checks
static/     the talk page, built by bin/setup from web/ (git-ignored)
"""
