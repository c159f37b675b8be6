"""`speccyd usage`: files, storage, generations, cache hits and cost, per user and per model."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from speccyd.storage.database import Database
    from speccyd.storage.records import UsageLine, UserUsage

from speccyd.cli.common import DataDir, fail, run_with_db, settings_for
from speccyd.config.units import parse_duration


def usage(
    data_dir: DataDir = None,
    since: Annotated[str, typer.Option("--since", help="Window for generations, cache hits and cost.")] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Files, storage, generations, cache hits and estimated cost, per user and per model."""
    from speccyd.generation.costs import price_table, usage_report

    try:
        window = parse_duration(since)
    except ValueError as e:
        fail(f"--since: {e}", 2)
    settings = settings_for(data_dir)

    async def read(db: Database) -> tuple[list[UserUsage], list[UsageLine]]:
        now = time.time()
        return await db.usage_report(now), await db.usage_lines(now - window)

    rows, lines = run_with_db(settings, read)
    prices = price_table(settings)
    report = {"since": since, **usage_report(rows, lines, prices)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    users, models, totals = report["users"], report["models"], report["totals"]
    from rich.console import Console
    from rich.table import Table

    # Eight narrow columns: fits an 80-column terminal with user ids cut to 8 characters.
    console = Console()
    table = Table(title=f"speccyd usage, last {since} (cost is an estimate)", title_justify="left")
    for column in ("user", "files", "MB", "gens", "chars", "hits", "cost $", "saved $"):
        table.add_column(column, justify="left" if column == "user" else "right")
    for u in users:
        table.add_row(
            u["user_id"][:8], str(u["files"]), f"{u['storage_mb']:.1f}", str(u["generations"]),
            str(u["characters"]), str(u["cache_hits"]), f"{u['estimated_cost_usd']:.2f}",
            f"{u['saved_cost_usd']:.2f}",
        )  # fmt: skip
    table.add_section()
    table.add_row(
        f"{len(users)} users", str(totals["files"]), f"{totals['storage_mb']:.1f}", str(totals["generations"]),
        str(totals["characters"]), str(totals["cache_hits"]), f"{totals['estimated_cost_usd']:.2f}",
        f"{totals['saved_cost_usd']:.2f}",
    )  # fmt: skip
    console.print(table)
    if models:
        by_model = Table(title="per model", title_justify="left")
        for column in ("model", "$/1M chars", "gens", "chars", "hits", "hit %", "cost $", "saved $"):
            by_model.add_column(column, justify="left" if column == "model" else "right")
        for m in models:
            ratio = m["cache_hit_ratio"]
            by_model.add_row(
                m["model"], f"{prices.per_character(m['model']):g}", str(m["generations"]),
                str(m["characters"]), str(m["cache_hits"]), "-" if ratio is None else f"{ratio:.0%}",
                f"{m['estimated_cost_usd']:.2f}", f"{m['saved_cost_usd']:.2f}",
            )  # fmt: skip
        console.print(by_model)
    ratio = totals["cache_hit_ratio"]
    console.print(
        f"cache hit ratio {'-' if ratio is None else f'{ratio:.0%}'}; today (UTC): "
        f"{totals['generated_today']} generations, {totals['characters_today']} characters"
    )
