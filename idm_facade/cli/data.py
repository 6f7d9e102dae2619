"""Commands that fill and dump the store: ``init-db``, ``import``, ``export``, ``demo-data``."""

from __future__ import annotations

from typing import Any

import click

from idm_facade.cli.options import config_option, db_option
from store.engine import database_url


@click.command("init-db")
@db_option
def init_db(db: str | None) -> None:
    """Create the store's tables (idempotent)."""
    from store.engine import make_engine

    make_engine(db)
    click.echo(f"store ready at {database_url(db)}")


def _print_counts(counts: dict[str, int]) -> None:
    width = max(len(key) for key in counts)
    for key, count in counts.items():
        click.echo(f"  {key:<{width}}  {count:>8,}")


def import_with_progress(db: str | None, doc: dict, replace: bool, actor: str) -> dict[str, int]:
    """Validate and import ``doc`` showing a per-table bar; exits with a message on errors."""
    from tqdm import tqdm

    from store import exchange
    from store.engine import make_engine

    engine = make_engine(db)
    total = sum(len(v) for v in doc.values() if isinstance(v, list)) if isinstance(doc, dict) \
        else 0
    with tqdm(total=total, desc="import", unit="rows", disable=None, leave=False) as bar:
        try:
            return exchange.import_document(
                engine, doc, actor=actor, replace=replace,
                progress=lambda _table, rows: bar.update(rows))
        except exchange.ExchangeError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            engine.dispose()


@click.command("import")
@db_option
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--replace", is_flag=True,
              help="Delete everything in the store first (otherwise a non-empty store is "
                   "refused).")
@click.option("--actor", default="cli-import", show_default=True,
              help="Who the change log records as the writer.")
def import_command(db: str | None, file, replace: bool, actor: str) -> None:  # noqa: ANN001
    """Import an exchange-format JSON FILE (``-`` for stdin), all or nothing."""
    from store import exchange

    try:
        doc = exchange.read(file)
    except exchange.ExchangeError as exc:
        raise click.ClickException(str(exc)) from None
    counts = import_with_progress(db, doc, replace, actor)
    click.echo(f"imported into {database_url(db)}:")
    _print_counts(counts)


@click.command("export")
@db_option
@config_option
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def export_command(db: str | None, config_path: str | None, file: str) -> None:
    """Export the whole store as exchange-format JSON to FILE (``-`` for stdout); every
    person in it, CPR numbers included, is recorded in the access log first."""
    from idm_facade.cli.disclosure import record_disclosure
    from store import exchange
    from store.engine import make_engine

    engine = make_engine(db)
    try:
        doc = exchange.export_document(engine)
    finally:
        engine.dispose()
    persons = doc.get("persons", [])
    record_disclosure(db, config_path, "cli.export", file, [p["id"] for p in persons],
                      ["cpr"] if any(p.get("cpr") for p in persons) else [])
    if file == "-":
        # click 8.5 declares get_text_stream in a way mypy reads as a plain object.
        stream = click.get_text_stream("stdout", encoding="utf-8")  # type: ignore[operator]
        exchange.write(doc, stream)
        stream.flush()
        return
    with open(file, "w", encoding="utf-8") as fp:
        exchange.write(doc, fp)
    rows = sum(len(v) for v in doc.values() if isinstance(v, list))
    click.echo(f"exported {rows:,} objects to {file}")


def generate_with_progress(size: str, seed: int, reference: Any) -> dict:
    """Generate the demo municipality ``size`` showing a bar of its phases."""
    from tqdm import tqdm

    from store import demo

    with tqdm(total=len(demo.PHASES), desc=f"generate {size}", disable=None, leave=False) as bar:

        def progress(step: str) -> None:
            bar.set_postfix_str(step)
            bar.update(1)

        return demo.generate(size, seed, reference, progress=progress)


@click.command("demo-data")
@db_option
@click.option("--size", type=click.Choice(["S", "M", "L", "XL"], case_sensitive=False),
              default="S", show_default=True,
              help="S ~300, M ~5,000, L ~28,000, XL ~48,000 persons.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Same seed and reference date give identical data.")
@click.option("--reference-date", "reference", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The 'today' future-dated changes are relative to (default: today, UTC).")
@click.option("--replace", is_flag=True, help="Delete everything in the store first.")
def demo_data(db: str | None, size: str, seed: int, reference, replace: bool) -> None:  # noqa: ANN001
    """Generate a synthetic municipality and import it through the validated import."""
    size = size.upper()
    doc = generate_with_progress(size, seed, reference)
    counts = import_with_progress(db, doc, replace, "demo-data")
    click.echo(f"demo municipality {size} (seed {seed}) imported into {database_url(db)}:")
    _print_counts(counts)


COMMANDS = (init_db, import_command, export_command, demo_data)
