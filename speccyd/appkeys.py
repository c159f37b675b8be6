"""Everything that lives on the application, as typed keys: the one place to look."""

from __future__ import annotations

from aiohttp import web

from speccyd.config.settings import Settings
from speccyd.generation.quotas import Quotas
from speccyd.generation.runner import JobManager
from speccyd.generation.upstream import Upstream
from speccyd.ops.discovery import Announcer
from speccyd.ops.metrics import Metrics
from speccyd.security.crypto import ServerSecrets
from speccyd.security.keycache import KeyCache
from speccyd.security.ratelimit import RateLimiter
from speccyd.security.revocations import Revocations
from speccyd.security.sessions import Sessions
from speccyd.storage.blobs import Blobs
from speccyd.storage.database import Store

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
