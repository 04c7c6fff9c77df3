"""`mmtrt repo`, `mmtrt serve` and `mmtrt infer`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mmtrt.cli_options import ServerOptions, allow_option, batch_size_option, server_options

from .client import CLASSIFIER_MODEL, DEFAULT_PORTS, FILE_MODELS, IMAGE_MODEL, JOINT_MODEL
from .replicas import ServeSettings
from .settings import Option, RepositorySettings, from_options, options
from .supervisor import MAX_RESTARTS, RESTART_WINDOW_S, RestartPolicy

# --------------------------------------------------------------------------- repo


def _setting_option(option: Option):
    """The click option of one setting of :class:`RepositorySettings` (mmtrt.serving.settings)."""
    if option.choices is not None:
        kind = click.Choice(list(option.choices))
    elif option.path:  # made absolute here: the server reads it from another working folder
        kind = click.Path(file_okay=False, resolve_path=True)
    elif option.kind is int:
        kind = click.IntRange(min=option.minimum)
    else:
        kind = option.kind
    given = option.default not in (None, "")
    return click.option(
        option.flag,
        option.name,
        type=kind,
        default=option.default if given else None,
        show_default=given,
        help=option.help,
    )


def _with_setting_options(fn):
    for option in reversed(options(RepositorySettings)):
        fn = _setting_option(option)(fn)
    return fn


@click.command("repo")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--engines",
    "engines_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="gpu: folder with the engines of `mmtrt build-engines` "
    "(<graph>[.<precision>][.smXY].plan) [default: EXPORT_DIR].",
)
@_with_setting_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def repo(export_dir: Path, out: Path, engines_dir: Path | None, overwrite: bool, **settings):
    """Build a Triton model repository OUT from the export folder EXPORT_DIR (ONNX files and
    manifest.json written by `mmtrt export`)."""
    from .checks import BUILD_ENGINES_HINT, missing_plan_files
    from .config import parse_config
    from .errors import ServingError
    from .repository import build_repository

    serving_log = logging.getLogger("mmtrt.serving")
    level = serving_log.level
    serving_log.setLevel(logging.ERROR)  # the build's warnings are said below instead
    try:
        asked = from_options(RepositorySettings, {k: v for k, v in settings.items() if v is not None})
        built = build_repository(export_dir, out, asked, engines_dir=engines_dir, overwrite=overwrite)
    except (ServingError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    finally:  # (the level is process-wide: put it back for whoever logs next in this process)
        serving_log.setLevel(level)
    flavour = asked.flavour
    configs = sorted(p.parent.name for p in built.glob("*/config.pbtxt"))
    click.echo(f"wrote {built} ({flavour} flavour): models {', '.join(configs)}")
    if flavour == "cpu":
        graph_model = next(c for c in configs if c in ("multimix", "classifier"))  # (runs a graph)
        params = parse_config((built / graph_model / "config.pbtxt").read_text()).parameters
        click.echo(f"runtime {params['runtime'].string_value}: {params['runtime_choice'].string_value}")
        served = params["precision"].string_value
        click.echo(f"precision {served}")
        if served != asked.precision:
            from mmtrt.runtimes.openvino import reduced_precision_native

            click.echo(f"warning: {reduced_precision_native(asked.precision)[1]}", err=True)
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


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--host",
    default=ServeSettings.host,
    show_default=True,
    help="Address the HTTP, gRPC and metrics endpoints bind to. The default is "
    "loopback only; see model_repository/README.md before exposing it.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=ServeSettings.http_port,
    show_default=True,
    help="0: any free port.",
)
@click.option(
    "--grpc-port", type=click.IntRange(0, 65535), default=ServeSettings.grpc_port, show_default=True
)
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=ServeSettings.metrics_port, show_default=True
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the server's own log goes (created 0600; a symbolic link there is refused) "
    "[default: a file in the temp folder]; with several replicas, replica i's goes to "
    "<stem>.<i><suffix> beside it.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=ServeSettings.timeout,
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
    f"most {MAX_RESTARTS} restarts in {RESTART_WINDOW_S // 60} minutes, then that "
    "server is stopped; when none is left mmtrt serve exits 1.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 32),
    default=ServeSettings.replicas,
    show_default=True,
    help="Run N servers of REPOSITORY on this host, replica i on each given port + 10*i "
    "(or free ports for 0), each with its own watchdog; use them all with "
    "`mmtrt infer --url A --url B ...`.",
)
@click.option(
    "--admin-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the key of Triton's admin APIs (shared memory, model repository and config, "
    "logging, trace, statistics), readable by its owner only [default: a new random key each run, "
    "in a 0600 file whose path is printed].",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The server's certificate (PEM): gRPC with TLS (Triton's own); HTTP then binds to "
    "loopback only, for a TLS proxy on this host (deploy/nginx). Needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Its key (PEM, mode 0600).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Mutual TLS: accept only gRPC clients whose certificate this CA (PEM) signed.",
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
    admin_key_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    tritonserver_args: tuple[str, ...],
):
    """Serve the model REPOSITORY (built by `mmtrt repo`) with the real Triton server until
    Ctrl-C or SIGTERM.

    Triton's admin APIs answer only requests with the admin key (header mmtrt-admin-key; the
    printed MMTRT_ADMIN_KEY_FILE=... gives it to mmtrt's tools); health, metadata and inference
    are open. Arguments after `--` go to tritonserver as they are (keys on them are shown as
    ***), e.g. `--log-verbose=1`; an API named in your own `--http-restricted-api` or
    `--grpc-restricted-protocol` takes your key instead.
    """
    from .errors import ServingError
    from .replicas import serve_replicas
    from .tls import ServerTls

    bad = [a for a in tritonserver_args if not a.startswith("--")]
    if bad:
        raise click.UsageError(
            f"unexpected argument(s) {list(bad)}: tritonserver flags go after `--` and start with `--`"
        )
    if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
        raise click.UsageError("TLS needs --tls-cert and --tls-key (and --tls-ca for mutual TLS)")
    try:
        tls = ServerTls(tls_cert, tls_key, tls_ca) if tls_cert is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--tls-cert / --tls-key / --tls-ca") from None
    settings = ServeSettings(
        repository,
        replicas=replicas,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_file=log_file,
        timeout=timeout,
        restarts=RestartPolicy(enabled=watchdog),
        extra_args=tritonserver_args,
        admin_key_file=admin_key_file,
        tls=tls,
    )
    try:
        serve_replicas(settings, echo=click.echo)
    except (ServingError, ValueError) as e:
        raise click.ClickException(str(e)) from None


# --------------------------------------------------------------------------- infer


@click.command("infer")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@server_options(
    f"Server address [default: 127.0.0.1:{DEFAULT_PORTS['http']} for http, "
    f"127.0.0.1:{DEFAULT_PORTS['grpc']} for grpc]; an http(s):// or grpc(s):// prefix is accepted. "
    "Repeat it for several servers: the batches are spread over those that are ready, and a "
    "batch whose server fails is sent to another (each image answered once; its JSON names the "
    "server)."
)
@click.option(
    "--model",
    type=click.Choice([JOINT_MODEL, CLASSIFIER_MODEL]),
    default=JOINT_MODEL,
    help=f"{JOINT_MODEL}: class + lung mask + saliency; {CLASSIFIER_MODEL}: class only.",
)
@click.option(
    "--send",
    type=click.Choice(["auto", "bytes", "tensor"]),
    default="auto",
    help="What goes to the server: tensor, the images decoded here (to --model); bytes, the "
    "files themselves, decoded in the server by the decoder copied into the repository (to "
    f"{IMAGE_MODEL}; --model {JOINT_MODEL} only); auto, bytes for DICOM files (.dcm or a DICM "
    "preamble) and tensors for the others. Each file is decoded here too, for its overlay, "
    "metadata and DICOM results.",
)
@batch_size_option("Images per request (capped at the model's max_batch_size).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("predictions"),
    help="Folder for the JSON and PNG overlay of each image.",
)
@click.option(
    "--dicom-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="For DICOM sources, also write DIR/<name>.seg.dcm (the lung mask as a DICOM "
    "Segmentation at the source's size), DIR/<name>.sc.dcm (the overlay as a Secondary "
    "Capture) and DIR/<name>.sr.dcm (pneumonia present/absent, its probability and the lung "
    "area as a Structured Report), referencing the source, marked not for clinical use; made "
    "again for the same source and model, they have the same UIDs.",
)
@click.option(
    "--export-manifest",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="manifest.json of the export the server runs: its checkpoint sha256 is recorded in "
    "the DICOM results and makes their UIDs (else they say 'unknown').",
)
@click.option(
    "--dicomweb",
    metavar="URL",
    default=None,
    help="Pull the images from this DICOMweb root (e.g. http://pacs:8042/dicom-web) instead of "
    "IMAGES: the instances of --study (QIDO-RS to list, WADO-RS to retrieve), except "
    "Segmentations, Structured Reports, presentation states and Secondary Captures. They are "
    "kept in a private temporary folder while they are classified, then deleted.",
)
@click.option("--study", metavar="UID", default=None, help="Study Instance UID to pull (with --dicomweb).")
@click.option("--series", metavar="UID", default=None, help="Only this series of --study (with --dicomweb).")
@click.option(
    "--stow",
    metavar="URL",
    default=None,
    help="Store the DICOM results (Segmentation, Secondary Capture, Structured Report) with "
    "STOW-RS at this DICOMweb root (e.g. the --dicomweb archive, into the source's study); they "
    "are written to --dicom-out too (default OUT/dicom).",
)
@click.option(
    "--model-version",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="The version of the model that must answer (a version the servers' repository serves, "
    "see model_repository/README.md); a server without it ready is not used. Default: the newest "
    "each server serves.",
)
@allow_option()
def infer(
    images: tuple[Path, ...],
    server: ServerOptions,
    model: str,
    send: str,
    batch_size: int,
    out: Path,
    dicom_out: Path | None,
    export_manifest: Path | None,
    dicomweb: str | None,
    study: str | None,
    series: str | None,
    stow: str | None,
    allow: frozenset[str],
    model_version: int | None,
):
    """Classify IMAGES (PNG/JPEG/TIFF/DICOM of any size, or folders of them) with a running
    server: per image OUT/<name>.json (probabilities, label, lung-mask fraction, the image's
    size, pixel spacing, view and DICOM UIDs) and OUT/<name>.png (the X-ray with the lung-mask
    contour, the saliency heat map and the prediction), then a summary table. DICOM files
    (.dcm, single-frame grayscale) are windowed by their VOI LUT or Window Center/Width; with
    --dicom-out each also gets a DICOM Segmentation, a Secondary Capture and a Structured
    Report. A DICOM file whose header says it is no frontal chest radiograph is refused by the
    input gate (here, or by the server's for files sent as bytes): printed as refused with the
    reason, its JSON says so, no overlay or DICOM results; --allow relaxes a rule. Exits non-zero
    if any image failed (a refusal is an answer, not a failure). With several --url, batches are
    spread over the servers that are ready and a failed server's batches go to the others."""
    from .infer import InferError, expand_inputs, infer_files

    if send == "bytes" and model not in FILE_MODELS:
        raise click.BadParameter(
            f"--model {model} takes decoded images only: the files themselves go to "
            + ", ".join(f"{v} (--model {k})" for k, v in FILE_MODELS.items()),
            param_hint="--send bytes",
        )
    if dicomweb is None and (study or series):
        raise click.UsageError("--study and --series choose what --dicomweb pulls: give --dicomweb URL too")
    if dicomweb is not None and (images or not study):
        raise click.UsageError("--dicomweb pulls the images of --study UID: give --study, and no IMAGES")
    if dicomweb is None and not images:
        raise click.UsageError("give IMAGES (files or folders), or --dicomweb URL --study UID")
    if stow is not None and dicom_out is None:
        dicom_out = out / "dicom"
    checkpoint_sha256 = None
    if export_manifest is not None:
        from mmtrt.dicom_results import checkpoint_sha256_from_manifest
        from mmtrt.export.manifest import ExportError

        try:
            checkpoint_sha256 = checkpoint_sha256_from_manifest(export_manifest)
        except (OSError, ExportError) as e:
            raise click.ClickException(f"--export-manifest {export_manifest}: unreadable ({e})") from None

    def say(line: str):
        click.echo(line, err=True)

    def run(paths):
        if not paths:
            raise click.ClickException("no image files given (the folders hold none)")
        try:
            return infer_files(
                paths,
                server.servers(say),
                model=model,
                send=send,
                batch_size=batch_size,
                out=out,
                dicom_out=dicom_out,
                checkpoint_sha256=checkpoint_sha256,
                relaxed=allow,
                model_version=str(model_version or ""),
            )
        except InferError as e:
            raise click.ClickException(str(e)) from None

    if dicomweb is None:
        results = run(expand_inputs(images))
    else:
        from mmtrt.dicomweb import DicomWebError, pull_study

        try:
            with pull_study(dicomweb, study, series, say=say) as pulled:
                results = run(pulled.files)
        except DicomWebError as e:
            raise click.ClickException(str(e)) from None
    if stow is not None:
        from mmtrt.dicomweb import DicomWebError, store_results

        try:
            store_results(stow, [p for r in results if r.dicom_paths for p in r.dicom_paths], say=say)
        except DicomWebError as e:
            raise click.ClickException(f"{e} (the results are in {dicom_out})") from None
    _report_results(results, out)


def _report_results(results, out: Path) -> None:
    from .infer import summary_table

    click.echo(summary_table(results))
    click.echo(f"results in {out}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(results)} image(s) failed: " + ", ".join(str(r.source) for r in failed)
        )


# --------------------------------------------------------------------------- update


@click.command("update")
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--add",
    "export",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="An export (`mmtrt export`) of the same architecture: added as the next version of the "
    "repository's graph models and served.",
)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="Serve this version instead (e.g. roll back to 1).",
)
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="HOST:PORT",
    help="A running server of REPOSITORY (`mmtrt serve`) to switch, one at a time; repeatable. "
    "Without it only the repository changes (a server started later serves the new version).",
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", help="Its endpoint.")
def update(repository: Path, export: Path | None, version: int | None, urls: tuple[str, ...], protocol: str):
    """Put a new model version in service without stopping the servers: add an export as the
    next version of REPOSITORY's models (--add), or serve another of its versions (--version),
    then load it on each running server (--url; they need MMTRT_ADMIN_KEY_FILE, the key `mmtrt
    serve` printed). Each server answers with the old version until the new one is loaded."""
    from .errors import InferError, ServingError
    from .update import add_version, graph_models, load_on, serve_version

    if (export is None) == (version is None):
        raise click.UsageError("give --add EXPORT or --version N")
    try:
        if export is not None:
            version = add_version(repository, export)
            click.echo(f"added {export} as version {version} of {', '.join(graph_models(repository))}")
        before = serve_version(repository, version)
        for model, old in before.items():
            click.echo(f"{model}: serves version {version} (was {old})")
        load_on(urls, protocol, list(before), say=click.echo)
    except (ServingError, InferError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server's refusal (RequestError), named as it is
        raise click.ClickException(f"loading on the server failed: {e}") from None
