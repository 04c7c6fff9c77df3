"""What the cpu flavour's python-backend models (model_repository/cpu) share: their settings read
from config.pbtxt, and the one way each answers a failed request.

It runs inside Triton's python-backend stub only, where ``triton_python_backend_utils`` exists:
``mmtrt repo`` copies it beside the served models with the rest of the package they import
(:data:`mmtrt.serving.checks.BACKEND_MODULES`); mmtrt itself never imports it.
"""

import triton_python_backend_utils as pb_utils

from .settings import from_parameters


def load_error(model_name: str, message: str):
    """The exception that stops a model from loading, naming it."""
    return pb_utils.TritonModelException(f"model '{model_name}': {message}")


def read_settings(cls, model_config: dict, model_name: str):
    """The model's config.pbtxt parameters as a ``cls`` settings object (mmtrt.serving.settings),
    or a :func:`load_error` naming the parameter that is missing or invalid."""
    params = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
    try:
        return from_parameters(cls, params)
    except ValueError as e:
        raise load_error(model_name, str(e)) from None


def invalid_input(model_name: str, message: str):
    """The response to a request whose own input is at fault: Triton answers it as invalid input
    (HTTP 400, gRPC INVALID_ARGUMENT), not as a server failure (HTTP 500, gRPC INTERNAL), so that
    clients know not to send it again. ``TritonError(message, code)``: the code argument and
    ``TritonError.INVALID_ARG`` are in the stub of Triton 2.51 (r24.10); an older stub takes the
    message alone (then the code stays INTERNAL)."""
    message = f"model '{model_name}': {message}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


def failed(model_name: str, message: str):
    """The response to a request the model failed on, not through the request's fault (HTTP 500,
    gRPC INTERNAL: a client may send it again)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"model '{model_name}': {message}"))
