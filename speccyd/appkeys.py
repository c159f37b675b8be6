"""Everything that lives on the application, as typed keys: the one place to look."""

from __future__ import annotations

from aiohttp import web

from speccyd.config.clock import Clock
from speccyd.config.settings import Settings
from speccyd.generation.files import FileService
from speccyd.generation.quotas import Quotas
from speccyd.generation.runner import JobRunner
from speccyd.generation.upstream import Upstream
from speccyd.ops.discovery import Announcer
from speccyd.ops.metrics import Metrics
from speccyd.security.crypto import ServerSecrets
from speccyd.security.keycache import KeyCache
from speccyd.security.ratelimit import RateLimiter
from speccyd.security.revocations import Revocations
from speccyd.security.sessions import Sessions
from speccyd.security.signin import SignIn
from speccyd.storage.blobs import BlobStore
from speccyd.storage.database import Database

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
SECRETS = web.AppKey("secrets", ServerSecrets)
SESSIONS = web.AppKey("sessions", Sessions)
DATABASE = web.AppKey("database", Database)
BLOBS = web.AppKey("blobs", BlobStore)
UPSTREAM = web.AppKey("upstream", Upstream)
SIGN_IN = web.AppKey("sign_in", SignIn)
RUNNER = web.AppKey("runner", JobRunner)
FILES = web.AppKey("files", FileService)
GENERATE_LIMIT = web.AppKey("generate_limit", RateLimiter)
AUTH_FAILURE_LIMIT = web.AppKey("auth_failure_limit", RateLimiter)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
REVOCATIONS = web.AppKey("revocations", Revocations)
QUOTAS = web.AppKey("quotas", Quotas)
METRICS = web.AppKey("metrics", Metrics)
STARTED_AT = web.AppKey("started_at", float)
ANNOUNCER = web.AppKey("announcer", Announcer)  # only while serving with mdns on
