"""The errors of mmtrt's serving side, in a module of their own so that a client imports no
server code."""


class ServingError(RuntimeError):
    """The Triton server or its model repository could not be prepared, started or used."""


class InferError(ServingError):
    """The server cannot be reached or used (not a problem with one image)."""
