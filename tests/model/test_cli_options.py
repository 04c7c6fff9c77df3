"""mmtrt.cli_options: the options several commands share are declared once, read the same in each
command, and turn bad input into a usage error naming the option."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from mmtrt.cli import main
from mmtrt.cli_options import IntList, NameList, ServerOptions, allow_option, server_options
from mmtrt.serving.client import Backoff


@click.command()
@server_options("where")
@click.option("--sizes", type=IntList(), default="1,2")
@click.option("--seeds", type=IntList(minimum=0), default="0")
@click.option("--targets", type=NameList(["a", "b"]), default=None)
def probe(server: ServerOptions, sizes, seeds, targets):
    click.echo(repr((server, sizes, seeds, targets)))


def run(*args: str):
    return CliRunner().invoke(probe, list(args))


def test_the_server_options_reach_the_command_as_one_object():
    result = run(
        "--url", "a:1", "--url", "grpc://b:2", "--protocol", "grpc", "--header", "k=v=w", "--header", "x=",
        "--retries", "0", "--retry-delay", "0.25", "--sizes", "4, 8", "--seeds", "0,3", "--targets", "b,a",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    server = ServerOptions(("a:1", "grpc://b:2"), "grpc", (("k", "v=w"), ("x", "")), 0, 0.25)
    assert result.output.strip() == repr((server, [4, 8], [0, 3], ["b", "a"]))


def test_the_defaults_are_the_local_server_and_the_client_defaults():
    result = run()
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr((ServerOptions(()), [1, 2], [0], None))
    for protocol, port in (("http", 8000), ("grpc", 8001)):
        servers = ServerOptions((), protocol).servers(say=print)
        assert [e.url for e in servers.endpoints] == [f"127.0.0.1:{port}"] and servers.protocol == protocol
        assert servers.retries == 5 and servers.backoff == Backoff(0.5)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--header", "novalue"), "Invalid value for '--header': 'novalue' is not KEY=VALUE"),
        (("--header", "=v"), "'=v' is not KEY=VALUE"),
        (("--protocol", "ftp"), "'ftp' is not one of 'http', 'grpc'"),
        (("--retries", "-1"), "Invalid value for '--retries'"),
        (("--sizes", "1,x"), "Invalid value for '--sizes': '1,x' is not a comma-separated list of integers"),
        (("--sizes", "0,4"), "'0,4': give integers of at least 1"),
        (("--sizes", ","), "give integers of at least 1"),
        (("--seeds", "-1"), "'-1': give integers of at least 0"),
        (("--targets", "a,c,d"), "Invalid value for '--targets': unknown ['c', 'd']; known: a, b"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.output, result.output


def _options(command: str) -> dict[str, dict]:
    with click.Context(main) as ctx:
        cmd = main.get_command(ctx, command)
    return {p.name: p.to_info_dict() for p in cmd.params if isinstance(p, click.Option)}


def test_infer_and_evaluate_share_their_server_options():
    """The same names, types, defaults and help; only what --url is for differs."""
    infer, evaluate = _options("infer"), _options("evaluate")
    for name in ("protocol", "headers", "retries", "retry_delay"):
        assert infer[name] == evaluate[name], name
    assert {k: v for k, v in infer["urls"].items() if k != "help"} == {
        k: v for k, v in evaluate["urls"].items() if k != "help"
    }
    assert infer["batch_size"]["default"] == evaluate["batch_size"]["default"] == 8


def test_header_values_come_from_a_file_or_the_environment(tmp_path, monkeypatch):
    """A secret need not be on the command line: KEY=@FILE (its first line), KEY=env:NAME."""
    token = tmp_path / "token"
    token.write_text("Bearer from-a-file\nignored\n")
    monkeypatch.setenv("MMTRT_TEST_TOKEN", "Bearer from-the-environment")
    result = run("--header", f"Authorization=@{token}", "--header", "X-Token=env:MMTRT_TEST_TOKEN")
    assert result.exit_code == 0, result.output
    assert (
        "('Authorization', 'Bearer from-a-file'), ('X-Token', 'Bearer from-the-environment')" in result.output
    )
    assert str(token) not in result.output


@pytest.mark.parametrize(
    "value, message",
    [
        ("@{missing}", "Authorization: cannot read its value from {missing}: [Errno 2] No such file"),
        ("@{empty}", "Authorization: {empty} is empty"),
        ("env:MMTRT_TEST_UNSET", "Authorization: the environment variable MMTRT_TEST_UNSET is not set"),
    ],
)
def test_a_header_value_that_cannot_be_read_is_a_usage_error(tmp_path, monkeypatch, value, message):
    monkeypatch.delenv("MMTRT_TEST_UNSET", raising=False)
    (tmp_path / "empty").write_text("\n")
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    result = run("--header", "Authorization=" + value.format(**paths))
    assert result.exit_code == 2 and message.format(**paths) in result.output, result.output


def test_allow_names_the_input_gate_rules_to_relax(tmp_path):
    """`--allow`: comma-separated rules of mmtrt.data.gate, as a frozenset; none by default; an
    unknown rule is a usage error naming it and the known ones, before any server is asked."""

    @click.command()
    @allow_option()
    def gated(allow):
        click.echo(repr(sorted(allow)))

    assert CliRunner().invoke(gated, []).output.strip() == "[]"
    assert CliRunner().invoke(gated, ["--allow", "view,modality"]).output.strip() == "['modality', 'view']"
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    r = CliRunner().invoke(main, ["infer", "--allow", "lateral", "--url", "127.0.0.1:1", str(image)])
    assert r.exit_code == 2
    assert "unknown gate rule(s) lateral: choose from body-part, view, modality" in r.output
