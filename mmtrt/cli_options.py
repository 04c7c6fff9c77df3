"""Command-line options that several commands share, each declared once: the same name, type,
default and help wherever the concept is the same (mmtrt's commands and the scripts of
benchmarks/). An option that only one command has stays beside that command.

- :func:`server_options`: a Triton server to talk to (``--url``, ``--protocol``, ``--header``,
  ``--retries``, ``--retry-delay``, ``--tls-ca / --tls-cert / --tls-key``), handed to the command as one :class:`ServerOptions`;
- :class:`IntList`, :class:`NameList` and :func:`batch_sizes_option`: comma-separated lists
  (the sizes of a sweep, the targets of a benchmark);
- :func:`batch_size_option`, :func:`seed_option`, :func:`device_option`,
  :func:`difficulty_option`: one batch size, a seed, where PyTorch runs, how subtle the
  synthetic pneumonia signal is;
- :func:`allow_option`: the input gate's rules to relax (:mod:`mmtrt.data.gate`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import click

from mmtrt.serving.client import DEFAULT_PORTS, PROTOCOLS, Backoff, Servers, Tls

# --------------------------------------------------------------------------- a Triton server


@dataclass(frozen=True)
class ServerOptions:
    """What ``--url``, ``--protocol``, ``--header``, ``--retries`` and ``--retry-delay`` asked for."""

    urls: tuple[str, ...]  # none given: the local server's default port for the protocol
    protocol: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    retries: int = 5
    retry_delay: float = 0.5
    tls: Tls | None = None

    def servers(self, say: Callable[[str], None]) -> Servers:
        """The servers asked for, used as one (fail-over; one server included)."""
        return Servers(
            self.urls or [f"127.0.0.1:{DEFAULT_PORTS[self.protocol]}"],
            self.protocol,
            headers=dict(self.headers) or None,
            tls=self.tls,
            retries=self.retries,
            backoff=Backoff(self.retry_delay),
            say=say,
        )


def _key_values(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE pairs; a secret (a proxy's token) is better not typed on the command line, where
    other local users and shell histories see it: KEY=@FILE takes the value from FILE's first
    line, KEY=env:NAME from the environment variable NAME."""
    pairs = []
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE")
        pairs.append((key, _secret_value(key, value)))
    return tuple(pairs)


def _secret_value(key: str, value: str) -> str:
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read(65536).splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"{key}: cannot read its value from {path}: {e}") from None
        if not lines or not lines[0].strip():
            raise click.BadParameter(f"{key}: {path} is empty")
        return lines[0].strip()
    if value.startswith("env:"):
        name = value[4:]
        if not os.environ.get(name):
            raise click.BadParameter(f"{key}: the environment variable {name} is not set")
        return os.environ[name]
    return value


def server_options(url_help: str, tls_prefix: str = "tls"):
    """The options of a command that talks to Triton servers: ``--url`` (repeatable; what the
    command does with it is ``url_help``), ``--protocol``, ``--header``, ``--retries``,
    ``--retry-delay`` and ``--tls-ca / --tls-cert / --tls-key`` (named ``--<tls_prefix>-ca`` ...
    by a command whose own --tls-* options are something else, e.g. a DICOM port's). The
    command receives them as one argument ``server`` (:class:`ServerOptions`)."""
    options = (
        click.option("--url", "urls", multiple=True, metavar="HOST:PORT", help=url_help),
        click.option(
            "--protocol",
            type=click.Choice(PROTOCOLS),
            default=ServerOptions.protocol,
            help="Triton's HTTP/REST or gRPC endpoint.",
        ),
        click.option(
            "--header",
            "headers",
            multiple=True,
            metavar="KEY=VALUE",
            callback=_key_values,
            help="HTTP/gRPC header sent with every request (e.g. a proxy's auth); repeatable. "
            "Keep secrets off the command line: KEY=@FILE reads the value from FILE, KEY=env:NAME "
            "from the environment variable NAME.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=ServerOptions.retries,
            help="Failures in a row after which a server is given up: at connection, and for the "
            "requests (a server restarting, a model's stub process restarted).",
        ),
        click.option(
            "--retry-delay",
            type=click.FloatRange(min=0),
            default=ServerOptions.retry_delay,
            help="First retry delay in seconds; doubled at each retry.",
        ),
    )

    pem = click.Path(exists=True, dir_okay=False)
    options += (
        click.option(
            f"--{tls_prefix}-ca",
            "client_tls_ca",
            type=pem,
            default=None,
            help="TLS: trust the servers whose certificate this CA (PEM) signed [default: the "
            f"system's CAs, when an address is https:// or grpcs:// or a --{tls_prefix}-* file is given].",
        ),
        click.option(
            f"--{tls_prefix}-cert",
            "client_tls_cert",
            type=pem,
            default=None,
            help="TLS: this client's certificate (mutual TLS).",
        ),
        click.option(
            f"--{tls_prefix}-key",
            "client_tls_key",
            type=pem,
            default=None,
            help="TLS: the client certificate's key.",
        ),
    )

    def decorate(command):
        @functools.wraps(command)
        def with_server(
            *args,
            urls,
            protocol,
            headers,
            retries,
            retry_delay,
            client_tls_ca,
            client_tls_cert,
            client_tls_key,
            **kwargs,
        ):
            tls_ca, tls_cert, tls_key = client_tls_ca, client_tls_cert, client_tls_key
            if (tls_cert is None) != (tls_key is None):
                raise click.UsageError(
                    f"a client certificate needs both --{tls_prefix}-cert and --{tls_prefix}-key"
                )
            tls = Tls(tls_ca, tls_cert, tls_key) if tls_ca or tls_cert else None
            server = ServerOptions(tuple(urls), protocol, headers, retries, retry_delay, tls)
            return command(*args, server=server, **kwargs)

        for option in reversed(options):
            with_server = option(with_server)
        return with_server

    return decorate


# --------------------------------------------------------------------------- sizes, seeds, devices


class IntList(click.ParamType):
    """A comma-separated list of integers of at least ``minimum``: ``"1,4,8"`` -> ``[1, 4, 8]``."""

    name = "N[,N...]"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            values = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not values or min(values) < self.minimum:
            self.fail(f"{value!r}: give integers of at least {self.minimum}", param, ctx)
        return values


class NameList(click.ParamType):
    """A comma-separated list of names out of ``known``: ``"a,b"`` -> ``["a", "b"]``."""

    name = "NAME[,NAME...]"

    def __init__(self, known):
        self.known = tuple(known)

    def convert(self, value, param, ctx) -> list[str]:
        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        unknown = sorted(set(names) - set(self.known))
        if unknown:
            self.fail(f"unknown {unknown}; known: {', '.join(self.known)}", param, ctx)
        return names


def batch_sizes_option(default: str, help: str = "Batch sizes of the sweep (comma-separated)."):
    """``--batch-size 1,4,8``: the batch sizes a benchmark sweeps, as the argument ``batch_sizes``."""
    return click.option("--batch-size", "batch_sizes", type=IntList(), default=default, help=help)


def batch_size_option(help: str, default: int | None = 8):
    """``--batch-size N``: images per forward pass or request."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=default,
        help=help,
    )


def seed_option(of: str):
    """``--seed`` (default 0): the seed ``of`` something (e.g. "the bootstrap")."""
    return click.option("--seed", default=0, help=f"Seed of {of}.")


def device_option(help: str = "Where PyTorch runs.", default: str | None = "cpu"):
    """``--device cpu|cuda``."""
    return click.option(
        "--device",
        type=click.Choice(["cpu", "cuda"]),
        default=default,
        help=help,
    )


def difficulty_option(default: float):
    """``--difficulty``: how subtle the synthetic pneumonia signal is (mmtrt.data.synthetic)."""
    return click.option(
        "--difficulty",
        type=click.FloatRange(0, 1),
        default=default,
        help="How subtle the synthetic pneumonia signal is: 0 obvious, 1 invisible.",
    )


# --------------------------------------------------------------------------- the input gate


#: the rules of mmtrt.data.gate, named here for the help text only: importing the gate loads
#: mmtrt.data (and torch), which a command's --help should not (tests check the two agree)
GATE_RULES_HELP = "body-part, view, modality"


class GateRules(click.ParamType):
    """A comma-separated list of input-gate rules (:data:`mmtrt.data.gate.RULES`) -> frozenset."""

    name = "RULE[,RULE...]"

    def convert(self, value, param, ctx) -> frozenset[str]:
        if isinstance(value, frozenset):
            return value
        from mmtrt.data.gate import relaxed_rules

        try:
            return relaxed_rules(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def allow_option():
    """``--allow body-part,view``: the input gate's rules to relax (default: none, every rule
    applies), as the argument ``allow`` (a frozenset of rule names)."""
    return click.option(
        "--allow",
        type=GateRules(),
        default="",
        show_default=False,
        help=f"Input-gate rules to relax, comma-separated ({GATE_RULES_HELP}; see the input gate in "
        "docs/input-gate.md). By default none: a DICOM file whose header says it is no frontal "
        "chest radiograph (Body Part Examined, a lateral View Position, a Modality other than "
        "CR/DX) is refused, with the reason.",
    )
