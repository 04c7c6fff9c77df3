"""The errors of mmtrt's serving side, in a module of their own so that a client imports no
server code."""


class ServingError(RuntimeError):
    """The Triton server or its model repository could not be prepared, started or used."""


class InferError(ServingError):
    """The server cannot be reached or used (not a problem with one image)."""


class ServerNotReady(InferError):
    """The server answers but is not ready (its models still loading, or it is stopping)."""


class NoServerLeft(InferError):
    """Every server of a run was given up (unreachable, failing, or serving other models)."""


class RequestError(Exception):
    """The server answered a request with an error (or tritonclient refused to send it).

    ``status`` is what the protocol says: the HTTP status ("400", "503") or the gRPC code
    ("StatusCode.INVALID_ARGUMENT"); "" when there is none. :func:`mmtrt.serving.faults.classify`
    sorts it into transient or invalid input."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}" if self.status else self.message
