"""``contentembed``: run the services locally, ingest catalogs, search."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from contentembed.cli.catalog import DEMO_CATALOG, read_labelled_queries
from contentembed.cli.eval_output import VersionFigures
from contentembed.cli.extras import missing_services_message
from contentembed.cli.retrieval import (
    AlphaOption,
    DepthOption,
    EvalMode,
    FusionOption,
    ModeOption,
    RrfKOption,
    expand_modes,
    has_retriever_detail,
    mode_label,
    ranks,
    retrieval_kwargs,
    retriever_score,
)
from contentembed.cli.shards import app as shards_app
from contentembed.cli.signals import StopRequested, StopSignals
from contentembed.cli.stack import LocalStack, StackError, StackEvent
from contentembed.client import (
    DEFAULT_TARGET,
    ApiError,
    Client,
    EncoderSpace,
    SearchResult,
    client_from_env,
)
from contentembed.pipeline.catalog import (
    DEFAULT_MAX_REJECTS,
    CatalogError,
    TooManyRejects,
    read_catalog_rows,
    write_rejects,
)
from contentembed.pipeline.hybrid import NotHybrid
from contentembed.pipeline.ingest import ingest_catalog

app = typer.Typer(
    help="contentembed: content-embedding retrieval over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(shards_app, name="shards")
console = Console()
err_console = Console(stderr=True)

TargetOption = Annotated[
    str, typer.Option("--target", "-t", envvar="CONTENTEMBED_TARGET", help="Gateway host:port.")
]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
DEMO_COLLECTION = "products"


# `build --merge` when some slices are not complete yet: nothing was written.
EXIT_SLICES_MISSING = 3
# `build` when the collection already has the version it would make (same catalog, model,
# parameters, shards): nothing new to build or publish.
EXIT_VERSION_EXISTS = 4


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def require_service_extras(command: str) -> None:
    """Exit 1 with one line naming the missing extras when the services cannot start here."""
    message = missing_services_message(command)
    if message:
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)


def ingest_documents(
    client: Client, collection: str, path: Path, batch_size: int, show_progress: bool = True,
    hybrid: bool = False,
) -> tuple[int, list[str]]:
    """Creates the collection if needed (hybrid: with a lexical index) and upserts the
    catalog in batches."""
    catalog = read_catalog_rows(path, max_rejects=None)
    outcome = ingest_catalog(client, collection, catalog, batch_size, show_progress=show_progress,
                             hybrid=hybrid)
    return outcome.written, outcome.truncated


def print_hits(result: SearchResult, query: str, expected_id: str | None = None) -> None:
    title = f"[bold]{escape(query)}[/]"
    table = Table(title=title, title_justify="left", show_lines=False, expand=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    # Which retriever found each hit of a fused answer, at which rank, with which score.
    detail = has_retriever_detail(result)
    if detail:
        table.add_column("dense/lexical", justify="right")
        table.add_column("dense", justify="right")
        table.add_column("lexical", justify="right")
    table.add_column("id")
    table.add_column("category")
    table.add_column("price", justify="right")
    for rank, hit in enumerate(result.hits, start=1):
        marker = " [green](expected)[/]" if hit.id == expected_id else ""
        price = hit.metadata.get("price")
        retrievers = (
            [ranks(hit), retriever_score(hit.dense_score), retriever_score(hit.lexical_score)]
            if detail else []
        )
        table.add_row(
            str(rank),
            f"{hit.score:.3f}",
            *retrievers,
            escape(hit.id) + marker,
            escape(str(hit.metadata.get("category", ""))),
            f"{price:.2f}" if isinstance(price, (int, float)) else "",
        )
    console.print(table)
    flags = " [yellow]PARTIAL[/]" if result.partial else ""
    mode = f"{mode_label(result)} · " if result.mode else ""
    console.print(
        f"  {mode}space {escape(result.space_id)} · {len(result.shards)} shards · "
        f"{result.latency_ms['total']:.1f} ms (encode {result.latency_ms['encode']:.1f}, "
        f"search {result.latency_ms['search']:.1f}){flags}\n",
        style="dim",
    )


SUPERVISE_INTERVAL_S = 0.5


def print_stack(stack: LocalStack) -> None:
    table = Table(title="contentembed is up", title_justify="left")
    for column in ("service", "gRPC", "/metrics port", "pid"):
        table.add_column(column)
    for service in stack.services:
        table.add_row(service.name, service.address, str(service.metrics_port), str(service.pid))
    console.print(table)
    console.print(f"logs: {stack.run_dir / 'logs'}/<service>.log")
    console.print(f"clients use [bold]{stack.gateway_address}[/]; Ctrl-C stops everything.")


def report(event: StackEvent) -> None:
    if event.restarted:
        err_console.print(f"[yellow]{escape(str(event))}[/]", soft_wrap=True)
    else:
        console.print(f"[green]{escape(str(event))}[/]", soft_wrap=True)


def supervise(stack: LocalStack, signals: StopSignals) -> int:
    """Starts the stack and restarts what exits until a service keeps failing (exit code
    1); a stop signal ends it with StopRequested."""
    try:
        console.print(
            f"starting {len(stack.configured_ports())} services, logs in {stack.run_dir / 'logs'} ..."
        )
        stack.start()
        print_stack(stack)
        while True:
            for event in stack.poll():
                report(event)
            time.sleep(SUPERVISE_INTERVAL_S)
    except StackError as error:
        signals.disarm()
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        if stack.services:
            console.print("stopping the services ...")
        return 1


def run_stack(stack: LocalStack, body: Callable[[StopSignals], int]) -> int:
    """Runs ``body`` (which starts ``stack``) until it returns or a stop signal arrives,
    then stops the stack; returns the exit code, 0 for a requested stop."""
    signals = StopSignals()
    stack.spawn_guard = signals.held
    # Handlers go in before the first child starts, and stay while the stack stops: a
    # second Ctrl-C is then only noted instead of killing the launcher half-way.
    with signals:
        try:
            return body(signals)
        except StopRequested as stop:
            console.print(f"{stop.signal_name} received; stopping the services ...")
            return 0
        finally:
            try:
                signals.disarm()
            finally:
                stack.stop()


@app.command()
def up(
    shards: Annotated[int, typer.Option(help="Number of index shards.")] = 2,
    replicas: Annotated[int, typer.Option(
        min=1, max=16, help="Replicas per shard: 2 or more survive a replica's loss "
        "(writes go to a primary, reads to any replica in sync).")] = 1,
    gateway_port: Annotated[int, typer.Option(help="Gateway port clients use.")] = 50051,
    encoder_port: Annotated[int, typer.Option(help="Text encoder; the image encoder is +1.")] = 50052,
    index_base_port: Annotated[int, typer.Option(
        help="Replica r of shard i listens on this + i x replicas + r.")] = 50061,
    metrics_base_port: Annotated[int, typer.Option(help="/metrics ports from here; 0: any.")] = 9100,
    run_dir: Annotated[Path, typer.Option(help="Logs and port files.")] = Path(".contentembed/run"),
    text_model: Annotated[str | None, typer.Option(help="Model dir for the text-encoder.")] = None,
    max_restarts: Annotated[
        int, typer.Option(min=0, help="Restarts allowed per service within --restart-window.")
    ] = 5,
    restart_window: Annotated[
        float, typer.Option(min=0.0, help="Seconds over which --max-restarts is counted.")
    ] = 60.0,
) -> None:
    """Start text- and image-encoder, index shards and gateway locally and keep them running.

    Ctrl-C, SIGTERM or SIGHUP (unless started under nohup) stops them in order: gateway,
    shards, encoders, each with SIGTERM and up to 20 s to drain, then SIGKILL; such a
    requested stop exits with code 0. A service that exits is restarted on the same port,
    at most --max-restarts times within --restart-window seconds; beyond that everything
    stops with exit code 1. A port already in use: nothing starts, exit code 1. On Linux
    the services also stop (SIGTERM) when the launcher itself is killed.
    """
    require_service_extras("up")
    stack = LocalStack(
        run_dir=run_dir,
        shard_count=shards,
        replicas=replicas,
        gateway_port=gateway_port,
        encoder_port=encoder_port,
        index_base_port=index_base_port,
        metrics_base_port=metrics_base_port,
        text_model=text_model,
        max_restarts=max_restarts,
        restart_window_s=restart_window,
    )
    code = run_stack(stack, lambda signals: supervise(stack, signals))
    if code:
        raise typer.Exit(code)
    console.print("stopped.")


RejectsOption = Annotated[
    int,
    typer.Option(min=0, help="Stop with exit code 1 when more rows than this are rejected."),
]
HybridOption = Annotated[
    bool,
    typer.Option("--hybrid", help="A hybrid collection: a lexical (BM25) index over the texts "
                 "beside the vectors (for search --mode lexical|hybrid)."),
]
LanguageOption = Annotated[
    str | None,
    typer.Option("--language", help="--hybrid or --lexical-only: stemming and stop words of "
                 "the lexical index (english when new, another Snowball language, or none)."),
]
LexicalOnlyOption = Annotated[
    bool,
    typer.Option("--lexical-only", help="A lexical-only collection: a lexical (BM25) index "
                 "over the texts and no vectors (no encoder needed; every search is lexical)."),
]


@app.command()
def ingest(
    catalog: Annotated[
        Path | None,
        typer.Argument(help="JSONL: {'id', 'text' or 'image' (path relative to the file), "
                       "'metadata'} per line."),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Ingest the built-in demo catalog.")] = False,
    collection: CollectionOption = DEMO_COLLECTION,
    batch_size: Annotated[int, typer.Option(
        min=1, max=1000, help="Most rows per upsert request (requests are also cut at 8 MiB).")] = 64,
    space: Annotated[
        str | None, typer.Option(help="Space for a missing collection (default: the encoder's "
                                 "for the catalog's modality).")
    ] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Rejected rows as JSON lines; default "
                                  "<catalog stem>.rejects.jsonl here, written only if any.")
    ] = None,
    max_rejects: RejectsOption = DEFAULT_MAX_REJECTS,
    hybrid: HybridOption = False,
    language: LanguageOption = None,
    lexical_only: LexicalOnlyOption = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Embed a JSONL catalog and upsert it into a collection (created if missing).

    Rows that cannot be used (bad JSON, id, content, metadata, missing image, duplicate id,
    or refused by the gateway) are written to the rejects file; more than --max-rejects
    stops the run with exit code 1. With --hybrid a missing collection is created with a
    lexical (BM25) index over the texts; an existing one must already have one. With
    --lexical-only a missing collection is created with the lexical index alone (text rows,
    nothing embedded); an existing one must be lexical-only."""
    if (catalog is None) == (not demo):
        raise fail("give a catalog path or --demo")
    if hybrid and lexical_only:
        raise fail("--hybrid and --lexical-only exclude each other")
    if lexical_only and space is not None:
        raise fail("a lexical-only collection has no space: drop --space")
    if language is not None and not (hybrid or lexical_only):
        raise fail("--language is the lexical index's: give it with --hybrid or --lexical-only")
    path = DEMO_CATALOG if demo else catalog
    assert path is not None
    if not path.is_file():
        raise fail(f"{path} is not a file")
    rejects_path = rejects or Path(f"{path.stem}.rejects.jsonl")
    try:
        rows = read_catalog_rows(path, max_rejects)
    except TooManyRejects as error:
        write_rejects(rejects_path, error.rejects)
        raise fail(f"{error}; see {rejects_path}") from None
    except CatalogError as error:
        raise fail(str(error)) from None
    with client_from_env(target) as client:
        try:
            outcome = ingest_catalog(
                client, collection, rows, batch_size, space_id=space, max_rejects=max_rejects,
                hybrid=hybrid, language=language, lexical_only=lexical_only,
            )
            info = client.get_collection(collection)
        except (ApiError, CatalogError, NotHybrid) as error:
            raise fail(escape(str(error))) from None
    if outcome.rejects:
        write_rejects(rejects_path, outcome.rejects)
    if len(outcome.rejects) > max_rejects:
        raise fail(f"{len(outcome.rejects)} rows rejected, more than --max-rejects "
                   f"{max_rejects}; see {rejects_path}")
    lexical = f", lexical index in {info.lexical_language}" if info.lexical else ""
    where = ("lexical only" if info.lexical_only else f"space {info.space_id}")
    console.print(
        f"upserted {outcome.written} documents into [bold]{collection}[/] "
        f"({info.item_count} items on {info.shard_count} shards, {where}{lexical})"
    )
    if outcome.rejects:
        console.print(f"[yellow]{len(outcome.rejects)} rows rejected: see {rejects_path}[/]")
    if outcome.truncated:
        console.print(
            f"[yellow]{len(outcome.truncated)} texts were truncated to the model's length[/]"
        )


@app.command()
def build(
    catalog: Annotated[Path, typer.Argument(help="JSONL catalog (as for ingest).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    as_json: Annotated[bool, typer.Option("--json", help="Last stdout line: a JSON summary.")] = False,
    version: Annotated[str | None, typer.Option(help="Version id (default: b-<hash>).")] = None,
    space: Annotated[str | None, typer.Option(help="Embed into this space.")] = None,
    shards: Annotated[
        int | None, typer.Option(min=1, help="Parts (default: the gateway's shard count).")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Rows per resumable chunk.")] = 1024,
    max_rejects: RejectsOption = DEFAULT_MAX_REJECTS,
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", min=2, max=128)] = 16,
    ef_construction: Annotated[int, typer.Option(min=1)] = 200,
    ef_search: Annotated[int, typer.Option(min=1)] = 100,
    local: Annotated[
        bool, typer.Option("--local", help="Run the encoder backends in this process.")
    ] = False,
    text_backend: Annotated[str, typer.Option(help="--local text backend.")] = "sentence-transformers",
    text_model: Annotated[str, typer.Option(help="--local text model.")] = "all-MiniLM-L6-v2",
    image_backend: Annotated[str, typer.Option(help="--local image backend.")] = "pixels",
    image_model: Annotated[str, typer.Option(help="--local image model.")] = "vit_b_16",
    image_weights: Annotated[str, typer.Option(help="--local torchvision weights.")] = "",
    device: Annotated[str, typer.Option(help="--local torch device.")] = "auto",
    encoder: Annotated[
        list[str] | None,
        typer.Option("--encoder", help="Encoder host:port (repeatable); default: the gateway's."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Batches in flight per encoder.")] = 4,
    offline: Annotated[
        bool,
        typer.Option(help="Do not talk to the gateway (needs --shards and --local or --encoder); "
                     "online writes made during the build are then NOT captured."),
    ] = False,
    slice_: Annotated[
        str | None, typer.Option("--slice", help="I/N: embed only slice I of N, then stop.")
    ] = None,
    merge_: Annotated[
        bool, typer.Option("--merge", help="Assemble the bundle from the slices in the work dir.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Embed N slices in N processes.")] = 1,
    previous: Annotated[
        Path | None, typer.Option("--from", help="Reuse unchanged rows' vectors of this bundle.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    hybrid: HybridOption = False,
    language: LanguageOption = None,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Embed a catalog into a bundle (docs/bundles.md): one part per index shard.

    With --hybrid the parts also carry the texts, and each shard builds its lexical (BM25)
    index from them; an existing collection must already be hybrid, a missing one is
    created hybrid when the bundle is published.

    Chunks of embeddings go to OUT.work/ first, so a killed build resumes where it
    stopped. Unless --offline, the build asks the gateway for encoders and shard count and,
    when the collection exists, opens the pending version (BeginVersion) before embedding,
    so online writes made during the build reach the new version; with --offline they do
    not."""
    from contentembed.pipeline.build import (
        BuildError,
        BuildOptions,
        Hnsw,
        SlicesMissing,
        VersionExists,
        parse_slice,
        run_build,
    )
    from contentembed.pipeline.embedders import LocalOptions

    if language is not None and not hybrid:
        raise fail("--language is the lexical index's: give it with --hybrid")
    try:
        options = BuildOptions(
            catalog=catalog, collection=collection, out=out, shards=shards,
            hnsw=Hnsw(hnsw_m, ef_construction, ef_search), chunk_size=chunk_size,
            max_rejects=max_rejects, version=version, previous=previous, space_id=space,
            local=LocalOptions(text_backend, text_model, image_backend, image_model,
                               image_weights, device) if local else None,
            encoders=encoder or [], offline=offline,
            target=target, slice=parse_slice(slice_) if slice_ else None, merge_only=merge_,
            workers=workers, concurrency=concurrency, progress=progress,
            lexical=(language or "") if hybrid else None,
        )
        if not catalog.is_file():
            raise BuildError(f"{catalog} is not a file")
        started = time.perf_counter()
        with tqdm(desc=f"build {catalog.name}", unit="item", disable=not progress) as bar:
            outcome = run_build(options, lambda text: err_console.print(escape(text)), bar)
        elapsed = time.perf_counter() - started
    except TooManyRejects as error:
        raise fail(f"{error}; see {out.with_name(out.name + '.work') / 'rejects.jsonl'}") from None
    except SlicesMissing as error:
        # Not a failure for an Indexed Job: the pod of the last slice merges.
        raise fail(f"{escape(str(error))} (exit code {EXIT_SLICES_MISSING}: not every "
                   "slice is done yet; merge again once they are)", EXIT_SLICES_MISSING) from None
    except VersionExists as error:
        raise fail(f"{escape(str(error))} (exit code {EXIT_VERSION_EXISTS})",
                   EXIT_VERSION_EXISTS) from None
    except (BuildError, CatalogError) as error:
        raise fail(escape(str(error))) from None
    except KeyboardInterrupt:
        raise fail("stopped; finished chunks are kept in the work dir: re-run to resume", 130) from None
    rate = outcome.embedded / elapsed if elapsed > 0 else 0.0
    err_console.print(
        f"embedded {outcome.embedded} rows ({rate:.0f} items/s), reused {outcome.reused} from "
        f"--from, {outcome.resumed_chunks} chunks already done"
    )
    result = outcome.result
    if result is None:
        err_console.print(f"slice {slice_} of version {outcome.version} done; merge with --merge")
        if as_json:
            print(json.dumps({"version": outcome.version, "bundle": None, "slice": slice_,
                              "embedded": outcome.embedded, "reused": outcome.reused}))
        return
    if result.already_built:
        err_console.print(f"{out} already holds this bundle (digest {result.digest})")
    else:
        err_console.print(f"bundle {result.version}: {result.items} items in {len(result.parts)} "
                          f"parts {result.parts}, {result.rejects} rejected; digest {result.digest}")
    if as_json:
        print(json.dumps({
            "version": result.version, "bundle": str(out), "items": result.items,
            "rejects": result.rejects, "digest": result.digest,
            "embedded": outcome.embedded, "reused": outcome.reused,
            "resumed_chunks": outcome.resumed_chunks, "already_built": result.already_built,
        }))


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file given on the command line; one-line error if unreadable."""
    if not path.is_file():
        raise fail(escape(f"{path}: no such image file"))
    try:
        return path.read_bytes()
    except OSError as error:
        raise fail(escape(f"cannot read {path}: {error.strerror or error}")) from None


def text_or_image(text: str | None, image: Path | None) -> None:
    if (text is None) == (image is None):
        raise fail("give a query text or --image PATH, not both")


ImageOption = Annotated[
    Path | None, typer.Option("--image", help="An image file to use instead of the text.")
]


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="Query text (or --image).")] = None,
    image: ImageOption = None,
    collection: CollectionOption = DEMO_COLLECTION,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    version: Annotated[
        str, typer.Option("--version", help="Search a loaded version instead of the serving one.")
    ] = "",
    exact: Annotated[
        bool, typer.Option("--exact", help="Brute force instead of HNSW (the recall reference).")
    ] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="Metadata filter, repeatable: key=value (twice for "
                     "either value), key>=n, key>n, key<=n, key<n."),
    ] = None,
    ef: Annotated[int, typer.Option(min=0, help="HNSW ef for this search; 0: the default.")] = 0,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many hits (the next page).")] = 0,
    score_threshold: Annotated[
        float | None, typer.Option(help="Leave out hits scoring below this.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the hits as a self-contained HTML page."),
    ] = None,
    media_root: Annotated[
        Path | None,
        typer.Option(help="--html: resolve the hits' metadata image paths here (default: .)."),
    ] = None,
    allow_partial: Annotated[bool, typer.Option(help="Answer even if a shard is down.")] = False,
    mode: ModeOption = None,
    fusion: FusionOption = None,
    alpha: AlphaOption = None,
    rrf_k: RrfKOption = 0,
    depth: DepthOption = 0,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Print the ranked hits for a text query or an image (--image).

    --mode lexical or hybrid needs a text query and a hybrid collection (ingest or build
    --hybrid); hybrid answers show each hit's dense/lexical rank and scores. A lexical-only
    collection (ingest --lexical-only) answers text queries lexical, with no --mode."""
    from contentembed.cli.filters import FilterError, parse_filters

    text_or_image(query, image)
    try:
        metadata_filter = parse_filters(filters or [])
    except FilterError as error:
        raise fail(escape(str(error))) from None
    image_bytes = read_image_file(image) if image is not None else None
    with client_from_env(target) as client:
        try:
            result = client.search(
                collection, text=query, image=image_bytes, top_k=top_k,
                allow_partial=allow_partial, version=version, exact=exact, ef=ef,
                offset=offset, score_threshold=score_threshold, filter=metadata_filter or None,
                **retrieval_kwargs(mode, fusion, alpha, rrf_k, depth),
            )
        except ApiError as error:
            raise fail(escape(str(error))) from None
    if html is not None:
        from contentembed.cli.html_report import render_search_page

        page = render_search_page(
            result, collection=collection, query_text=query, query_image=image_bytes,
            query_name=image.name if image is not None else "", exact=exact,
            media_root=media_root,
        )
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as error:
            raise fail(escape(f"cannot write {html}: {error.strerror or error}")) from None
        err_console.print(f"wrote {escape(str(html))}", soft_wrap=True)
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print_hits(result, query if query is not None else f"image {image}")


@app.command()
def spaces(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """The encoders the gateway routes to: modality, space, model, dim, backend, address."""
    with client_from_env(target) as client:
        try:
            found = client.list_spaces()
        except ApiError as error:
            raise fail(escape(str(error))) from None
    if as_json:
        print(json.dumps([asdict(space) for space in found], indent=2))
        return
    table = Table()
    for column in ("modality", "space", "model", "dim", "backend", "address"):
        table.add_column(column, justify="right" if column == "dim" else "left", overflow="fold")
    for space in sorted(found, key=lambda s: (s.modality, s.space_id, s.address)):
        model = space.model_id + (f"@{space.model_revision}" if space.model_revision else "")
        table.add_row(space.modality, space.space_id, model, str(space.dim), space.backend,
                      space.address)
    console.print(table)


def pick_encoder(found: list[EncoderSpace], modality: str, space_id: str | None) -> EncoderSpace:
    """The encoder for ``space_id``, or the only space of ``modality``; exits 1 otherwise."""
    if space_id is not None:
        match = [s for s in found if s.space_id == space_id]
        if not match:
            known = ", ".join(sorted({s.space_id for s in found})) or "none"
            raise fail(escape(f"no encoder serves space {space_id} (spaces: {known})"))
        if match[0].modality != modality:
            given = "--image" if modality == "image" else "a text"
            raise fail(escape(f"space {space_id} embeds {match[0].modality}s, but {given} was "
                              "given"))
        return match[0]
    match = [s for s in found if s.modality == modality]
    ids = sorted({s.space_id for s in match})
    if not ids:
        raise fail(f"no {modality} encoder behind the gateway")
    if len(ids) > 1:
        raise fail(escape(f"several {modality} spaces ({', '.join(ids)}): pick one with --space"))
    return match[0]


@app.command()
def embed(
    text: Annotated[str | None, typer.Argument(help="Text to embed (or --image).")] = None,
    image: ImageOption = None,
    space: Annotated[
        str | None, typer.Option(help="Space to embed into (default: the only one for the "
                                 "input's modality).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the vector to this .npy file.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON output (the default without --out; with --out "
                           "a summary instead of the vector).")
    ] = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """The vector of a text or an image, from the encoder the gateway routes that space to.

    Prints {"space_id", "dim", "vector"} as JSON, or writes the vector (float32, shape
    (dim,)) to --out. The encoder is called directly at the address the gateway reports."""
    from contentembed.pipeline.embedders import EmbedError, InputRefused, RemoteEmbedder

    text_or_image(text, image)
    content: str | bytes = read_image_file(image) if image is not None else str(text)
    modality = "image" if image is not None else "text"
    with client_from_env(target) as client:
        try:
            chosen = pick_encoder(client.list_spaces(), modality, space)
        except ApiError as error:
            raise fail(escape(str(error))) from None
    embedder = None
    try:
        embedder = RemoteEmbedder(chosen.address, concurrency=1)
        if embedder.space.space_id != chosen.space_id:
            raise fail(escape(f"encoder {chosen.address} now embeds into "
                              f"{embedder.space.space_id}, not {chosen.space_id}"))
        vector = embedder.embed_batch([content])[0]
    except InputRefused as error:
        raise fail(escape(f"the encoder refused the input: {error.message}")) from None
    except EmbedError as error:
        raise fail(escape(str(error))) from None
    finally:
        if embedder is not None:
            embedder.close()
    if out is None:
        print(json.dumps({"space_id": chosen.space_id, "dim": int(vector.shape[0]),
                          "vector": [float(v) for v in vector]}))
        return
    import numpy as np

    try:
        with out.open("wb") as handle:
            np.save(handle, vector.astype(np.float32))
    except OSError as error:
        raise fail(escape(f"cannot write {out}: {error.strerror or error}")) from None
    if as_json:
        print(json.dumps({"space_id": chosen.space_id, "dim": int(vector.shape[0]),
                          "out": str(out)}))
    else:
        console.print(f"wrote the {vector.shape[0]}-d vector (space {escape(chosen.space_id)}) "
                      f"to {escape(str(out))}", soft_wrap=True)


@app.command()
def collections(target: TargetOption = DEFAULT_TARGET) -> None:
    """List collections with their item counts (lexical: the language of a hybrid or
    lexical-only one; a lexical-only one has no space)."""
    with client_from_env(target) as client:
        try:
            found = list(client.list_collections())
        except ApiError as error:
            raise fail(str(error)) from None
    table = Table()
    for column in ("name", "items", "shards", "space", "version", "lexical"):
        table.add_column(column)
    for info in found:
        lexical = info.lexical_language if info.lexical else "–"
        table.add_row(info.name, str(info.item_count), str(info.shard_count),
                      "– (lexical only)" if info.lexical_only else info.space_id,
                      info.version, f"{lexical} (only)" if info.lexical_only else lexical)
    console.print(table)


@app.command()
def candidate(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    version: Annotated[str, typer.Argument(help="A loaded version; '' clears the candidate.")],
    shadow: Annotated[float, typer.Option(help="Share of queries mirrored to it (0..1).")] = 0.1,
    canary: Annotated[float, typer.Option(help="Share of queries it answers (0..1).")] = 0.0,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Name a candidate version for shadow traffic and canary."""
    with client_from_env(target) as client:
        try:
            client.set_candidate(collection, version, shadow_fraction=shadow, canary_weight=canary)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(f"{collection}: candidate {version or '(none)'}, shadow {shadow:.0%}, canary {canary:.0%}")


@app.command("shadow-report")
def shadow_report(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """How the candidate compares with the serving version on mirrored live queries."""
    with client_from_env(target) as client:
        try:
            report = client.shadow_report(collection)
        except ApiError as error:
            raise fail(str(error)) from None
    if as_json:
        print(json.dumps(asdict(report), indent=2))
        return
    table = Table(title=f"{collection}: {report.candidate_version} vs {report.primary_version}",
                  title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in [
        ("shadow queries", str(report.queries)),
        ("shadow failures", str(report.failures)),
        ("mean overlap@k", f"{report.mean_overlap_at_k:.3f}"),
        ("mean rank correlation", f"{report.mean_rank_correlation:.3f}"),
        ("mean latency delta", f"{report.mean_latency_delta_ms:+.1f} ms"),
        ("canary queries", str(report.canary_queries)),
        ("candidate space", report.candidate_space_id),
    ]:
        table.add_row(label, value)
    console.print(table)


@app.command()
def promote(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Make the candidate the serving version on every shard."""
    with client_from_env(target) as client:
        try:
            promotion = client.promote_candidate(collection)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(
        f"{collection}: now serving {promotion.version} (was {promotion.previous_version})"
    )


@app.command()
def rollback(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Point every shard back at the version that served before the last flip."""
    with client_from_env(target) as client:
        try:
            version = client.rollback_collection(collection)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(f"{collection}: now serving {version}")


@app.command()
def publish(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle directory written by build.")],
    collection: CollectionOption = DEMO_COLLECTION,
    shard: Annotated[
        list[str] | None,
        typer.Option("--shard", help="Shard host:port in shard order (repeat); default: the "
                     "gateway's shards."),
    ] = None,
    mounted: Annotated[
        str | None,
        typer.Option(help="The bundle's path below every shard's --bundle-root: load it "
                     "from there instead of uploading."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary last.")] = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Ship a bundle's parts to the index shards and install it as a version.

    Into a new collection the version serves at once; into an existing one it is loaded
    without serving (then `candidate` and `promote`, or `activate`). Every part is uploaded
    and verified before any shard installs it; a shard that fails leaves nothing serving
    the new version anywhere, and publishing again completes it.
    """
    from contentembed.pipeline.publish import BundleError, Publisher, PublishError, read_bundle

    try:
        bundle = read_bundle(bundle_dir)
    except BundleError as error:
        raise fail(str(error)) from None
    addresses = list(shard or [])
    with client_from_env(target) as client:
        try:
            if not addresses:
                addresses = [s.address for s in client.list_shards()]
            served = {e.space_id for e in client.list_spaces()}
        except ApiError as error:
            raise fail(f"asking the gateway at {target}: {error}") from None
    if len(addresses) != len(bundle.parts):
        raise fail(
            f"the bundle has {len(bundle.parts)} parts but there are {len(addresses)} shards; "
            f"build it again with --shards {len(addresses)}"
        )
    with Publisher(addresses) as publisher:
        try:
            new_collection = not publisher.collection_exists(collection)
            if new_collection and bundle.space_id not in served:
                raise fail(
                    f"no encoder serves the bundle's space {bundle.space_id} (encoders serve "
                    f"{sorted(served)}): a new collection in it could not be searched"
                )
            upload_ids = None
            if mounted is None:
                total = sum(part.size for part in bundle.parts)
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {bundle.version}",
                          disable=as_json) as progress:
                    upload_ids = publisher.upload(bundle, collection, progress.update)
            shards = publisher.install(bundle, collection, new_collection, upload_ids, mounted)
        except PublishError as error:
            raise fail(str(error)) from None
    with client_from_env(target) as client:
        try:  # a version published before may be serving already
            serving = client.get_collection(collection).version == bundle.version
        except ApiError:
            serving = new_collection
    if as_json:
        print(json.dumps({
            "collection": collection, "version": bundle.version, "digest": bundle.digest,
            "serving": serving,
            "shards": [{"shard": s.shard, "address": s.address, "items": s.items,
                        "digest": s.digest} for s in shards],
        }))
        return
    items = sum(s.items for s in shards)
    if serving:
        done = "created" if new_collection else "published to"
        console.print(f"{done} [bold]{collection}[/]: {bundle.version} is serving "
                      f"({items} items on {len(shards)} shards)")
    else:
        console.print(
            f"{collection}: version {bundle.version} loaded on {len(shards)} shards "
            f"({items} items), not serving. Next: contentembed candidate {collection} "
            f"{bundle.version} --shadow 0.1, then promote (or activate)."
        )


@app.command()
def activate(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    version: Annotated[str, typer.Argument(help="A version loaded on every shard.")],
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Make a loaded version serve on every shard at once, without shadow traffic first."""
    with client_from_env(target) as client:
        try:
            client.set_candidate(collection, version)
            promotion = client.promote_candidate(collection)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(
        f"{collection}: now serving {promotion.version} (was {promotion.previous_version})"
    )


@app.command()
def versions(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """The versions of a collection: serving, candidate, loaded and pending, with spaces."""
    with client_from_env(target) as client:
        try:
            info = client.get_collection(collection)
        except ApiError as error:
            raise fail(str(error)) from None
    table = Table(title=f"{collection}: {info.item_count} items on {info.shard_count} shards",
                  title_justify="left")
    for column in ("version", "state", "space"):
        table.add_column(column)
    for name in sorted(set(info.versions) | set(info.pending_versions)):
        if name == info.version:
            state = "serving"
        elif name in info.pending_versions:
            state = "pending: gets every write until published"
        elif name == info.candidate_version:
            state = "candidate"
        else:
            state = "loaded"
        table.add_row(name, state, info.version_spaces.get(name, ""))
    console.print(table)


@app.command()
def retire(
    collection: Annotated[str, typer.Argument(help="Collection.")],
    version: Annotated[str, typer.Argument(help="A version that is not serving.")],
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Drop a version that does not serve (pending, candidate or previous) from every shard.
    Writes stop reaching it; it can no longer be a rollback target."""
    with client_from_env(target) as client:
        try:
            client.delete_version(collection, version)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(f"{collection}: version {version} dropped")


EvalModeOption = Annotated[
    list[EvalMode] | None,
    typer.Option("--mode", help="Evaluate this retrieval (repeat to compare side by side; "
                 "all: dense, lexical and hybrid); default: the gateway's for the collection."),
]


@app.command("eval")
def evaluate_command(
    queries: Annotated[
        Path | None, typer.Argument(help="JSONL: {'id', 'text'|'image', 'relevant': [ids]}.")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="The demo's 30 labelled queries (for `ingest --demo`).")
    ] = False,
    collection: CollectionOption = DEMO_COLLECTION,
    version: Annotated[
        list[str] | None,
        typer.Option("--version", help="A loaded version (repeat to compare); default: serving."),
    ] = None,
    mode: EvalModeOption = None,
    fusion: FusionOption = None,
    alpha: AlphaOption = None,
    rrf_k: RrfKOption = 0,
    depth: DepthOption = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON last.")] = False,
    target: TargetOption = DEFAULT_TARGET,
) -> None:
    """Recall@1/5/10, MRR@10, nDCG@10 and ANN recall@10 (HNSW against exact search) of
    labelled queries through the live gateway, one column per version.

    With --mode (repeatable, or all) one column per version and mode: dense, lexical and
    hybrid side by side (ANN recall is n/a for lexical and hybrid), and with both dense
    and lexical the union ceiling: the share of queries with a relevant id in the dense
    or the lexical top 10. --fusion, --alpha, --rrf-k and --depth apply to hybrid."""
    from dataclasses import replace

    from contentembed.cli.eval_output import eval_columns, eval_json, union_lines
    from contentembed.pipeline.evaluation import (
        EVAL_DEPTH,
        LabelledQuery,
        QueriesError,
        evaluate,
        read_queries,
        union_recall,
    )

    if (queries is None) == (not demo):
        raise fail("give a queries file or --demo")
    try:
        labelled = (
            read_queries(queries) if queries is not None
            else [LabelledQuery(str(n), q.query, frozenset({q.expected_id}))
                  for n, q in enumerate(read_labelled_queries())]
        )
    except (QueriesError, OSError) as error:
        raise fail(str(error)) from None
    modes = expand_modes(mode)
    images = sum(isinstance(q.content, bytes) for q in labelled)
    textual = [m for m in modes if m in ("lexical", "hybrid")]
    if images and textual:
        raise fail(f"--mode {textual[0]} needs text queries; {images} of the "
                   f"{len(labelled)} queries are images")
    fused = retrieval_kwargs(None, fusion, alpha, rrf_k, depth)
    del fused["mode"]
    figures = []
    with client_from_env(target, timeout=60.0) as client:
        try:
            info = client.get_collection(collection)
        except ApiError as error:
            raise fail(str(error)) from None
        for name in version or [""]:
            label = name or info.version
            reports = []
            for wanted in modes:
                answered: dict[str, str] = {}

                def search(content: str | bytes, exact: bool, name: str = name,
                           wanted: str | None = wanted,
                           answered: dict[str, str] = answered) -> list[str]:
                    kind = {"text": content} if isinstance(content, str) else {"image": content}
                    options = fused if wanted in (None, "hybrid") else {}
                    result = client.search(collection, top_k=EVAL_DEPTH, version=name,
                                           exact=exact, mode=wanted, **options, **kind)
                    answered.setdefault("mode", result.mode)
                    answered.setdefault("fusion", result.fusion)
                    return [hit.id for hit in result.hits]

                # HNSW against exact search means something for dense answers only.
                ann = wanted == "dense" or (wanted is None and not info.lexical)
                desc = f"eval {label}" + (f" {wanted}" if wanted else "")
                try:
                    with tqdm(total=len(labelled), desc=desc, unit="query",
                              disable=as_json) as progress:
                        report = evaluate(label, labelled, search, progress.update, ann=ann)
                except ApiError as error:
                    raise fail(escape(str(error))) from None
                answered_mode = wanted or answered.get("mode", "")
                reports.append(replace(
                    report, mode=answered_mode, fusion=answered.get("fusion", ""),
                    ann_recall=report.ann_recall if answered_mode in ("", "dense") else None,
                ))
            by_mode = {report.mode: report for report in reports}
            union = (union_recall(labelled, by_mode["dense"], by_mode["lexical"])
                     if {"dense", "lexical"} <= set(by_mode) else None)
            figures.append(VersionFigures(label, reports, union))
    if as_json:
        print(json.dumps(eval_json(figures, by_mode=bool(mode))))
        return
    titles, rows = eval_columns(figures, by_mode=bool(mode))
    table = Table(title=f"{collection}: {len(labelled)} labelled queries", title_justify="left")
    table.add_column("measure", no_wrap=True)
    for title in titles:
        table.add_column(escape(title), justify="right")
    for measure, cells in rows:
        table.add_row(measure, *cells)
    console.print(table)
    for line in union_lines(figures):
        console.print(escape(line), soft_wrap=True)


@app.command()
def health(target: TargetOption = DEFAULT_TARGET) -> None:
    """Show the gateway's grpc.health.v1 status (exit 1 unless SERVING)."""
    with client_from_env(target) as client:
        try:
            status = client.health(timeout=3.0)
        except ApiError as error:
            raise fail(str(error)) from None
    console.print(status)
    if status != "SERVING":
        raise typer.Exit(1)


def run_demo(stack: LocalStack, signals: StopSignals, queries: int) -> int:
    labelled = read_labelled_queries()
    console.print(
        f"[bold]1/3[/] starting text- and image-encoder, {stack.shard_count} index shards and gateway ..."
    )
    started = time.perf_counter()
    try:
        stack.start()
        console.print(f"    all SERVING after {time.perf_counter() - started:.1f} s "
                      f"(gateway {stack.gateway_address}, logs in {stack.run_dir / 'logs'})")
        with Client(stack.gateway_address, timeout=30.0) as client:
            console.print(f"[bold]2/3[/] ingesting {DEMO_CATALOG.name} into '{DEMO_COLLECTION}' "
                          "(hybrid: HNSW and a BM25 index of the texts)")
            written, _ = ingest_documents(client, DEMO_COLLECTION, DEMO_CATALOG, 64, hybrid=True)
            info = client.get_collection(DEMO_COLLECTION)
            console.print(f"    {written} documents, {info.item_count} items on "
                          f"{info.shard_count} shards, space {info.space_id}")
            console.print("[bold]3/3[/] example queries (paraphrases of catalog items), "
                          "hybrid: each hit's dense and lexical rank\n")
            found = dict.fromkeys(("dense", "lexical", "hybrid"), 0)
            for number, item in enumerate(labelled):
                for mode in found:
                    result = client.search(DEMO_COLLECTION, text=item.query, top_k=5, mode=mode)
                    found[mode] += item.expected_id in [hit.id for hit in result.hits]
                    if mode == "hybrid" and number < queries:
                        print_hits(result, item.query, item.expected_id)
            console.print(
                f"[bold]recall@5[/] over {len(labelled)} hand-written paraphrased queries: "
                + ", ".join(
                    f"{mode} [bold green]{count / len(labelled):.2f}[/] ({count}/{len(labelled)})"
                    for mode, count in found.items()
                )
            )
    except (StackError, ApiError, CatalogError) as error:
        signals.disarm()
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        return 1
    return 0


@app.command()
def demo(
    shards: Annotated[int, typer.Option(help="Number of index shards.")] = 2,
    run_dir: Annotated[Path, typer.Option(help="Logs and port files.")] = Path(".contentembed/demo"),
    queries: Annotated[int, typer.Option(help="How many example queries to show.")] = 6,
) -> None:
    """The main job on built-in data: start the services, ingest the demo catalog,
    run example queries, print ranked results and recall@5, stop.

    Ctrl-C, SIGTERM or SIGHUP stops the services early (gateway, shards, encoders) and
    exits with code 0."""
    require_service_extras("demo")
    stack = LocalStack(run_dir=run_dir, shard_count=shards)
    code = run_stack(stack, lambda signals: run_demo(stack, signals, queries))
    if code:
        raise typer.Exit(code)
    console.print("services stopped.")


if __name__ == "__main__":
    app()
