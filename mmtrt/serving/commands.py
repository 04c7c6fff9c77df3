"""`mmtrt repo`, `mmtrt serve` and `mmtrt infer`."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import click


def _fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


# --------------------------------------------------------------------------- repo


@click.command("repo")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--flavour",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="cpu: python backend + onnxruntime (runs anywhere, also on the bundled "
    "server); gpu: TensorRT engines + ensembles (NVIDIA's Triton container).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="max_batch_size of the models [default: the manifest's max_batch, i.e. the "
    "engines' profile maximum].",
)
@click.option(
    "--engines",
    "engines_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="gpu: folder with the engines of `mmtrt build-engines` "
    "(<graph>[.<precision>][.smXY].plan) [default: EXPORT_DIR].",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="How long the dynamic batcher waits to fill a batch.",
)
@click.option(
    "--ort-threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="cpu: onnxruntime intra-op threads per model (0: one per core).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def repo(
    export_dir: Path,
    out: Path,
    flavour: str,
    max_batch: int | None,
    engines_dir: Path | None,
    max_queue_delay_us: int,
    ort_threads: int,
    overwrite: bool,
):
    """Build a Triton model repository OUT from the export folder EXPORT_DIR (ONNX files and
    manifest.json written by `mmtrt export`)."""
    from .repository import BUILD_ENGINES_HINT, build_repository, missing_plan_files
    from .server import ServingError

    logging.getLogger("mmtrt.serving.repository").setLevel(logging.ERROR)  # said below instead
    try:
        built = build_repository(
            export_dir,
            out,
            flavour=flavour,
            max_batch=max_batch,
            engines_dir=engines_dir,
            max_queue_delay_us=max_queue_delay_us,
            ort_threads=ort_threads,
            overwrite=overwrite,
        )
    except (ServingError, ValueError) as e:
        _fail(str(e))
    configs = sorted(p.parent.name for p in built.glob("*/config.pbtxt"))
    click.echo(f"wrote {built} ({flavour} flavour): models {', '.join(configs)}")
    missing = missing_plan_files(built)
    if missing:
        click.echo(
            f"warning: {len(missing)} TensorRT engine file(s) missing: "
            + ", ".join(str(p.relative_to(built)) for p in missing),
            err=True,
        )
        click.echo("  " + BUILD_ENGINES_HINT.format(export=export_dir), err=True)
    else:
        click.echo(f"serve it with: mmtrt serve {built}")


# --------------------------------------------------------------------------- serve


class _Stop(Exception):
    """Raised in the main thread by the SIGINT / SIGTERM / SIGHUP handler."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stopping = False


def _raise_stop(signum, _frame):
    """The first signal interrupts the main thread; later ones are ignored (the clean-up runs)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise _Stop(signum)


# The watchdog of `mmtrt serve`: how often it looks for dead stub processes, and how many
# restarts it makes in a window before it gives up (a model whose stub dies at once again).
WATCHDOG_PERIOD_S = 1.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600


def _exit_status(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _describe_models(server) -> list[str]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, network_timeout=10.0)
    lines = []
    try:
        for entry in client.get_model_repository_index(headers=server.headers):
            name = entry["name"]
            try:
                meta = client.get_model_metadata(name, headers=server.headers)
                ins = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in meta["inputs"])
                outs = ", ".join(t["name"] for t in meta["outputs"])
                detail = f"in: {ins}; out: {outs}"
            except Exception as e:  # noqa: BLE001 - only for the listing
                detail = f"(metadata unavailable: {e})"
            lines.append(f"  model {name} v{entry.get('version', '?')} {entry.get('state', '?')}  {detail}")
    finally:
        client.close()
    return lines


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the HTTP, gRPC and metrics endpoints bind to. The default is "
    "loopback only; see model_repository/README.md before exposing it.",
)
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port."
)
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the server's own log goes [default: a file in the temp folder].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the models to load.",
)
@click.option(
    "--watchdog/--no-watchdog",
    default=True,
    show_default=True,
    help="Restart tritonserver on the same ports when it exits on its own (a crash) "
    "or a model's python-backend stub process dies (Triton does not restart a "
    "stub: the model would fail every request while still reported ready). At "
    f"most {MAX_RESTARTS} restarts in {RESTART_WINDOW_S // 60} minutes, then "
    "mmtrt serve exits 1.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 32),
    default=1,
    show_default=True,
    help="Run N servers of REPOSITORY on this host, replica i on each given port + 10*i "
    "(or free ports for 0), each with its own watchdog; use them all with "
    "`mmtrt infer --url A --url B ...`.",
)
@click.argument("tritonserver_args", nargs=-1, type=click.UNPROCESSED)
def serve(
    repository: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_file: Path | None,
    timeout: float,
    watchdog: bool,
    replicas: int,
    tritonserver_args: tuple[str, ...],
):
    """Serve the model REPOSITORY (built by `mmtrt repo`) with the real Triton server until
    Ctrl-C or SIGTERM.

    Arguments after `--` go to tritonserver as they are, e.g.
    `mmtrt serve REPO -- --http-restricted-api=model-repository,shared-memory:admin-key=SECRET`.
    """
    from .server import ServingError, TritonServer, find_tritonserver

    bad = [a for a in tritonserver_args if not a.startswith("--")]
    if bad:
        raise click.UsageError(
            f"unexpected argument(s) {list(bad)}: tritonserver flags go after `--` and start with `--`"
        )
    if replicas > 1:
        from .replicas import serve_replicas

        try:
            code = serve_replicas(
                repository,
                replicas,
                host=host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log_file=log_file,
                timeout=timeout,
                watchdog=watchdog,
                extra_args=tritonserver_args,
                echo=click.echo,
            )
        except (ServingError, ValueError) as e:
            _fail(str(e))
        sys.exit(code)
    try:
        server = TritonServer(
            repository,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log_file=log_file,
            extra_args=tritonserver_args,
        )
        binary = find_tritonserver()
    except (ServingError, ValueError) as e:
        _fail(str(e))

    global _stopping
    _stopping = False
    handlers = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        click.echo(f"starting {binary} on {repository} (log: {server.log_path})")
        t0 = time.monotonic()
        server.start(timeout=timeout)
        click.echo(f"HTTP     http://{server.http_url}")
        click.echo(f"gRPC     {server.grpc_url}")
        click.echo(f"metrics  {server.metrics_url}")
        for line in _describe_models(server):
            click.echo(line)
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(
                f"warning: bound to {host}: anyone who can reach this machine can use the "
                "server; see 'Exposing the server' in model_repository/README.md",
                err=True,
            )
        click.echo(f"ready in {time.monotonic() - t0:.1f} s (pid {server.pid}); Ctrl-C or SIGTERM stops it")
        sys.stdout.flush()
        restarts: list[float] = []
        next_check = time.monotonic() + WATCHDOG_PERIOD_S
        while True:
            time.sleep(0.2)
            exited = not server.is_running()
            if exited and not watchdog:
                break
            if not exited:
                if not watchdog or time.monotonic() < next_check:
                    continue
                dead = server.dead_stubs()
                next_check = time.monotonic() + WATCHDOG_PERIOD_S
                if not dead:
                    continue
                reason = f"the python-backend stub process of model(s) {', '.join(dead)} died"
            else:
                reason = f"tritonserver exited on its own ({_exit_status(server.exit_code)})"
            restarts = [t for t in restarts if time.monotonic() - t < RESTART_WINDOW_S]
            if len(restarts) >= MAX_RESTARTS:
                raise ServingError(
                    f"{reason} after {len(restarts)} restarts in {RESTART_WINDOW_S // 60} "
                    f"minutes; giving up\n--- tail of {server.log_path} ---\n{server.log_tail()}"
                )
            restarts.append(time.monotonic())
            click.echo(
                f"warning: {reason}; restarting tritonserver on the same ports "
                "(requests in flight fail; clients retry)",
                err=True,
            )
            if exited:
                click.echo(f"--- tail of {server.log_path} ---\n{server.log_tail(8)}", err=True)
            t1 = time.monotonic()
            server.restart(timeout=timeout)
            click.echo(
                f"serving again after {time.monotonic() - t1:.1f} s (pid "
                f"{server.pid}, restart {len(restarts)})"
            )
            sys.stdout.flush()
            next_check = time.monotonic() + WATCHDOG_PERIOD_S
        code = 1
        click.echo(
            f"Error: tritonserver exited on its own ({_exit_status(server.exit_code)})"
            f"\n--- tail of {server.log_path} ---\n{server.log_tail()}",
            err=True,
        )
    except _Stop as stop:
        click.echo(f"{stop}: stopping the server")
    except ServingError as e:
        click.echo(f"Error: {e}", err=True)
        code = 1
    finally:
        _stopping = True  # a second Ctrl-C must not interrupt the clean-up
        server.stop()
        for s, h in handlers.items():
            signal.signal(s, h)
    if code == 0:
        click.echo("stopped")
    sys.exit(code)


# --------------------------------------------------------------------------- infer


@click.command("infer")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--url",
    "urls",
    multiple=True,
    help="Server address host:port [default: 127.0.0.1:8000 for http, "
    "127.0.0.1:8001 for grpc]; an http(s):// prefix is accepted. Repeat it for several "
    "servers: the batches are spread over those that are ready, and a batch whose server "
    "fails is sent to another (each image answered once; its JSON names the server).",
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--model",
    type=click.Choice(["multimix", "classifier"]),
    default="multimix",
    show_default=True,
    help="multimix: class + lung mask + saliency; classifier: class only.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Images per request (capped at the model's max_batch_size).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("predictions"),
    show_default=True,
    help="Folder for the JSON and PNG overlay of each image.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Retries when the server is unreachable, at connection and for each batch "
    "(a server restarting, a model's stub process restarted).",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="First retry delay in seconds; doubled at each retry.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="KEY=VALUE",
    help="HTTP/gRPC header sent with every request (e.g. for a restricted API or a "
    "proxy's auth); repeatable.",
)
def infer(
    images: tuple[Path, ...],
    urls: tuple[str, ...],
    protocol: str,
    model: str,
    batch_size: int,
    out: Path,
    retries: int,
    retry_delay: float,
    headers: tuple[str, ...],
):
    """Classify IMAGES (PNG/JPEG/... of any size, or folders of them) with a running server:
    per image OUT/<name>.json (probabilities, label, lung-mask fraction) and OUT/<name>.png (the
    X-ray with the lung-mask contour, the saliency heat map and the prediction), then a summary
    table. Exits non-zero if any image failed."""
    from .infer import InferError, connect, expand_inputs, infer_files

    header_dict = {}
    for h in headers:
        key, sep, value = h.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{h!r} is not KEY=VALUE", param_hint="--header")
        header_dict[key] = value
    url = urls[0] if urls else f"127.0.0.1:{8000 if protocol == 'http' else 8001}"
    paths = expand_inputs(images)
    if not paths:
        _fail("no image files given (the folders hold none)")

    def say(line: str):
        click.echo(line, err=True)

    if len(urls) > 1:
        from .failover import infer_files_failover

        try:
            results = infer_files_failover(
                paths,
                urls=urls,
                protocol=protocol,
                model=model,
                batch_size=batch_size,
                out=out,
                headers=header_dict or None,
                retries=retries,
                backoff_s=retry_delay,
                say=say,
            )
        except InferError as e:
            _fail(str(e))
        _report_results(results, out)
        return

    try:
        client = connect(
            url, protocol, retries=retries, backoff_s=retry_delay, headers=header_dict or None, say=say
        )
    except InferError as e:
        _fail(str(e))
    try:
        results = infer_files(
            paths,
            client=client,
            protocol=protocol,
            model=model,
            batch_size=batch_size,
            out=out,
            headers=header_dict or None,
            url=url,
            retries=retries,
            backoff_s=retry_delay,
            say=say,
        )
    except InferError as e:
        _fail(str(e))
    finally:
        client.close()
    _report_results(results, out)


def _report_results(results, out: Path) -> None:
    from .infer import summary_table

    click.echo(summary_table(results))
    click.echo(f"results in {out}")
    failed = [r for r in results if not r.ok]
    if failed:
        click.echo(
            f"Error: {len(failed)} of {len(results)} image(s) failed: "
            + ", ".join(str(r.source) for r in failed),
            err=True,
        )
        sys.exit(1)
