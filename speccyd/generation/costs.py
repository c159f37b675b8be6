"""Cost estimates from the usage log: what was billed upstream, and what the cache saved.

Prices come from settings. OpenAI bills tts-1 and tts-1-hd per character (published: $15 and $30 per 1M
characters); gpt-4o-mini-tts is billed per token ($0.60 per 1M text input tokens, $12 per 1M audio output
tokens). When the upstream reports the tokens of a generation (gpt-4o-mini-tts over SSE), it is priced by
them; otherwise by characters, at an estimate for gpt-4o-mini-tts ($15 per 1M characters: OpenAI's $0.015 per
minute of audio). Failed generations cost nothing here: OpenAI bills no failed request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from speccyd.config.settings import Settings
from speccyd.config.units import iso
from speccyd.storage.records import UsageLine, UserUsage

# The window of every "30 days" figure: /user/usage, `speccyd users show` and the cache hit ratio gauge.
WINDOW_30D = 30 * 86400
# OpenAI's dated snapshots ("gpt-4o-mini-tts-2025-12-15") are priced as their model.
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def base_model(model: str) -> str:
    return _SNAPSHOT.sub("", model)


@dataclass(frozen=True)
class Prices:
    """USD per million characters by model, and per million (input, output) tokens for token-billed ones."""

    per_million_characters: dict[str, float]
    per_million_tokens: dict[str, tuple[float, float]]

    def per_character(self, model: str) -> float:
        # A model missing from the table (another upstream's) is priced like tts-1 rather than as free.
        table = self.per_million_characters
        return table.get(base_model(model), table["tts-1"])

    def of(self, line: UsageLine) -> float:
        """What a usage line cost (or, for cache hits, would have cost without the cache)."""
        by_characters = (line.characters - line.tokened_characters) * self.per_character(line.model) / 1_000_000
        token_prices = self.per_million_tokens.get(base_model(line.model))
        if token_prices is None or line.input_tokens is None or line.output_tokens is None:
            # Tokens reported for a model billed by character: its characters are what it costs.
            return by_characters + line.tokened_characters * self.per_character(line.model) / 1_000_000
        tokens = line.input_tokens * token_prices[0] + line.output_tokens * token_prices[1]
        return by_characters + tokens / 1_000_000


def price_table(settings: Settings) -> Prices:
    return Prices(
        {
            "tts-1": settings.price_tts_1,
            "tts-1-hd": settings.price_tts_1_hd,
            "gpt-4o-mini-tts": settings.price_gpt_4o_mini_tts,
        },
        {
            "gpt-4o-mini-tts": (
                settings.price_gpt_4o_mini_tts_input_tokens,
                settings.price_gpt_4o_mini_tts_output_tokens,
            )
        },
    )


@dataclass
class ModelUsage:
    model: str
    generations: int = 0
    characters: int = 0
    tokens: int | None = None
    cache_hits: int = 0
    cached_characters: int = 0
    failures: int = 0
    failed_characters: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0


@dataclass
class UsageSummary:
    models: dict[str, ModelUsage] = field(default_factory=dict)

    def _total(self, name: str) -> float:
        return float(sum(getattr(m, name) for m in self.models.values()))

    @property
    def generations(self) -> int:
        return int(self._total("generations"))

    @property
    def characters(self) -> int:
        return int(self._total("characters"))

    @property
    def tokens(self) -> int | None:
        """Tokens billed, where the upstream reported them; None when it never did."""
        reported = [m.tokens for m in self.models.values() if m.tokens is not None]
        return sum(reported) if reported else None

    @property
    def cache_hits(self) -> int:
        return int(self._total("cache_hits"))

    @property
    def cached_characters(self) -> int:
        return int(self._total("cached_characters"))

    @property
    def failures(self) -> int:
        return int(self._total("failures"))

    @property
    def failed_characters(self) -> int:
        return int(self._total("failed_characters"))

    @property
    def cost_usd(self) -> float:
        return self._total("cost_usd")

    @property
    def saved_usd(self) -> float:
        return self._total("saved_usd")

    @property
    def cache_hit_ratio(self) -> float | None:
        """Share of requests answered from the cache; None before the first request."""
        requests = self.generations + self.cache_hits
        return None if requests == 0 else self.cache_hits / requests

    def figures(self) -> dict[str, Any]:
        """The figures `speccyd usage` reports per user, per model and in total."""
        ratio = self.cache_hit_ratio
        return {
            "generations": self.generations,
            "characters": self.characters,
            "tokens": self.tokens,
            "cache_hits": self.cache_hits,
            "cached_characters": self.cached_characters,
            "failures": self.failures,
            "failed_characters": self.failed_characters,
            "cache_hit_ratio": None if ratio is None else round(ratio, 4),
            "estimated_cost_usd": round(self.cost_usd, 4),
            "saved_cost_usd": round(self.saved_usd, 4),
        }

    def figures_30d(self) -> dict[str, Any]:
        """The 30-day figures of /user/usage and `speccyd users show` (the summary must cover `WINDOW_30D`)."""
        return {
            "characters_30d": self.characters,
            "cache_hits_30d": self.cache_hits,
            "estimated_cost_30d_usd": round(self.cost_usd, 4),
            "saved_cost_30d_usd": round(self.saved_usd, 4),
        }


def summarize(lines: Iterable[UsageLine], prices: Prices) -> UsageSummary:
    """Fold usage lines (any mix of users) into per-model figures with estimated cost and savings."""
    summary = UsageSummary()
    for line in lines:
        m = summary.models.setdefault(line.model, ModelUsage(line.model))
        if line.kind == "generated":
            m.generations += line.events
            m.characters += line.characters
            if line.tokens is not None:
                m.tokens = (m.tokens or 0) + line.tokens
            m.cost_usd += prices.of(line)
        elif line.kind == "failed":
            # Sent upstream, counted against the daily quota, but not billed.
            m.failures += line.events
            m.failed_characters += line.characters
        elif line.kind == "cache_hit":
            # A cache hit would have cost a new generation of the same audio without the server.
            m.cache_hits += line.events
            m.cached_characters += line.characters
            m.saved_usd += prices.of(line)
    return summary


def by_user(lines: Iterable[UsageLine], prices: Prices) -> dict[str, UsageSummary]:
    grouped: dict[str, list[UsageLine]] = {}
    for line in lines:
        grouped.setdefault(line.user_id, []).append(line)
    return {user_id: summarize(user_lines, prices) for user_id, user_lines in grouped.items()}


def usage_report(rows: list[UserUsage], lines: list[UsageLine], prices: Prices) -> dict[str, Any]:
    """`speccyd usage`: every user's storage, today's activity and window figures, then per model, then totals."""
    per_user = by_user(lines, prices)
    overall = summarize(lines, prices)
    empty = summarize([], prices)
    users = [
        {
            "user_id": r.user_id,
            "first_seen": iso(r.first_seen),
            "last_seen": iso(r.last_seen),
            "files": r.files_count,
            "storage_mb": round(r.storage_bytes / 1_000_000, 3),
            "generated_today": r.generated_today,
            "characters_today": r.characters_today,
            **per_user.get(r.user_id, empty).figures(),
        }
        for r in rows
    ]
    models = [
        {"model": m.model, **summarize([x for x in lines if x.model == m.model], prices).figures()}
        for m in sorted(overall.models.values(), key=lambda m: m.model)
    ]
    totals = {
        "users": len(users),
        "files": sum(u["files"] for u in users),
        "storage_mb": round(sum(u["storage_mb"] for u in users), 3),
        "generated_today": sum(u["generated_today"] for u in users),
        "characters_today": sum(u["characters_today"] for u in users),
        **overall.figures(),
    }
    return {
        "prices_usd_per_million_chars": prices.per_million_characters,
        "prices_usd_per_million_tokens": {m: list(p) for m, p in prices.per_million_tokens.items()},
        "users": users,
        "models": models,
        "totals": totals,
    }
