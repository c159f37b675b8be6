"""Everything that lives on the application, as typed keys: the one place to look."""

from __future__ import annotations

from aiohttp import web

from speccyd.blobs import Blobs
from speccyd.crypto import ServerSecrets
from speccyd.discovery import Announcer
from speccyd.keycache import KeyCache
from speccyd.metrics import Metrics
from speccyd.quotas import Quotas
from speccyd.ratelimit import RateLimiter
from speccyd.revocations import Revocations
from speccyd.sessions import Sessions
from speccyd.settings import Settings
from speccyd.store import Store
from speccyd.synth import JobManager
from speccyd.upstream import Upstream

SETTINGS = web.AppKey("settings", Settings)
SECRETS = web.AppKey("secrets", ServerSecrets)
SESSIONS = web.AppKey("sessions", Sessions)
STORE = web.AppKey("store", Store)
BLOBS = web.AppKey("blobs", Blobs)
UPSTREAM = web.AppKey("upstream", Upstream)
JOBS = web.AppKey("jobs", JobManager)
GENERATE_LIMIT = web.AppKey("generate_limit", RateLimiter)
AUTH_FAILURE_LIMIT = web.AppKey("auth_failure_limit", RateLimiter)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
REVOCATIONS = web.AppKey("revocations", Revocations)
QUOTAS = web.AppKey("quotas", Quotas)
METRICS = web.AppKey("metrics", Metrics)
STARTED_AT = web.AppKey("started_at", float)
ANNOUNCER = web.AppKey("announcer", Announcer)  # only while serving with mdns on
